"""The one helper that compares an aspen-compiled model with eager."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch._dynamo
import torch.utils._pytree as pytree

import aspen_torch

RTOL = 1e-4
ATOL = 1e-4


def compile_strict(model: torch.nn.Module, **options: Any) -> torch.nn.Module:
    return torch.compile(model, backend="aspen", options={"strict": True, **options})


def assert_matches_eager(model: torch.nn.Module, *inputs: Any, rtol: float = RTOL, atol: float = ATOL,
                         options: Optional[dict] = None, calls: int = 2,
                         require_tiles: bool = True) -> aspen_torch.CompileReport:
    """Compiles `model` with aspen in strict mode (a fallback raises), runs it `calls`
    times and checks every output against eager. Returns what the compile produced.
    `require_tiles=False` accepts a graph with nothing to run (only views, or empty
    tensors) or none at all (dynamo ran the code in eager around a graph break)."""
    torch._dynamo.reset()
    report = aspen_torch.CompileReport(keep_tile_graphs=True)
    compiled = torch.compile(model, backend=lambda gm, ex: aspen_torch.aspen_backend(
        gm, ex, {"strict": True, **(options or {})}, report=report))
    with torch.no_grad():
        expected = model(*inputs)
        for _ in range(calls):
            actual = compiled(*inputs)
            torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
            assert_same_layout(actual, expected, inputs)
    assert report.num_tiles > 0 or not require_tiles, "aspen ran no tile"
    assert not report.fallback_ops
    return report


def assert_same_layout(actual: Any, expected: Any, inputs: Sequence[Any]) -> None:
    """Outputs have eager's strides, and share storage (with each other or an input) where
    eager's do, so writing through one output changes the same others as in eager."""
    # Non-tensor leaves (None, numbers) are compared by assert_close.
    actual, expected = ([t for t in pytree.tree_leaves(o) if isinstance(t, torch.Tensor)] for o in (actual, expected))
    # An empty tensor's strides reach no element, and compile-time meta kernels may pick
    # other ones than eager's (rms_norm of a [0, 1] input: (1, 1) against eager's (1, 0)).
    assert [t.stride() if t.numel() else None for t in actual] == [t.stride() if t.numel() else None for t in expected]
    owners = [t for t in inputs if isinstance(t, torch.Tensor)]

    def sharing(outputs: list[torch.Tensor], owners: list[torch.Tensor]) -> list[Optional[tuple]]:
        """Per output: which tensor first holds its storage, and its offset there, if shared."""
        ptrs = [t.untyped_storage().data_ptr() if t.numel() else None for t in owners + outputs]
        return [(ptrs.index(p), t.storage_offset()) if p is not None and ptrs.count(p) > 1 else None
                for p, t in zip(ptrs[len(owners):], outputs)]

    assert sharing(actual, owners) == sharing(expected, owners), "outputs alias differently from eager"
