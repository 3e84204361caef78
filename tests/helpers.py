"""The one helper that compares an aspen-compiled model with eager."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch._dynamo

import aspen_torch

RTOL = 1e-4
ATOL = 1e-4


def compile_strict(model: torch.nn.Module, **options: Any) -> torch.nn.Module:
    return torch.compile(model, backend="aspen", options={"strict": True, **options})


def assert_matches_eager(model: torch.nn.Module, *inputs: Any, rtol: float = RTOL, atol: float = ATOL,
                         options: Optional[dict] = None, calls: int = 2) -> aspen_torch.CompileReport:
    """Compiles `model` with aspen in strict mode (a fallback raises), runs it `calls`
    times and checks every output against eager. Returns what the compile produced."""
    torch._dynamo.reset()
    report = aspen_torch.CompileReport()
    compiled = torch.compile(model, backend=lambda gm, ex: aspen_torch.aspen_backend(
        gm, ex, {"strict": True, **(options or {})}, report=report))
    with torch.no_grad():
        expected = model(*inputs)
        for _ in range(calls):
            actual = compiled(*inputs)
            torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    assert report.num_tiles > 0, "aspen ran no tile"
    assert not report.fallback_ops
    return report
