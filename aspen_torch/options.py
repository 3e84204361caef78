"""The `options=` dict of torch.compile(backend="aspen"), validated into a typed object."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import torch

from .apu.prepack import LINEAR_KERNELS, mkl_linear_available


def default_num_dses() -> int:
    """As many DSEs as ATen would use intra-op threads."""
    return max(1, torch.get_num_threads())


@dataclasses.dataclass(frozen=True)
class AspenOptions:
    # None: keep the shared runtime's size (default_num_dses() when it is created).
    num_dses: Optional[int] = None
    strict: bool = False
    # Smallest work (FLOPs) worth a tile of its own; see apu/policy.py.
    min_tile_flops: float = 4e6
    tiles_per_dse: int = 1
    # An input a compiled graph has no plan for (a new shape of a graph with symbolic sizes,
    # another weight set of a graph shared by instances of one model class): "when_hot" runs
    # it in eager until the time spent on it pays for a compile (recompile.py), "always"
    # compiles at once. None: "always" in strict mode (which runs nothing in eager), else "when_hot".
    recompiles: Optional[str] = None
    # Library of the packed linear tiles: "onednn", "mkl" (its packed GEMM, where torch has
    # MKL), or "auto": the faster on this CPU, measured once per process (apu/prepack.py),
    # except in graphs with symbolic sizes, whose plans per shape share oneDNN's packings
    # (MKL packs per row count).
    linear_kernel: str = "auto"

    @property
    def recompiles_always(self) -> bool:
        return self.recompiles == "always" or (self.recompiles is None and self.strict)

    @staticmethod
    def from_dict(options: Optional[Mapping[str, Any]]) -> "AspenOptions":
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(AspenOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"aspen: unknown option(s) {unknown}; known options are {sorted(known)}")
        parsed = AspenOptions(**options)
        if parsed.num_dses is not None and not _is_int_at_least(parsed.num_dses, 1):
            raise ValueError(f"aspen: num_dses must be an int >= 1, got {parsed.num_dses!r}")
        if not isinstance(parsed.strict, bool):
            raise ValueError(f"aspen: strict must be a bool, got {parsed.strict!r}")
        if not _is_int_at_least(parsed.tiles_per_dse, 1):
            raise ValueError(f"aspen: tiles_per_dse must be an int >= 1, got {parsed.tiles_per_dse!r}")
        if isinstance(parsed.min_tile_flops, bool) or not isinstance(parsed.min_tile_flops, (int, float)) \
                or not parsed.min_tile_flops > 0:
            raise ValueError(f"aspen: min_tile_flops must be a number > 0, got {parsed.min_tile_flops!r}")
        if parsed.recompiles not in (None, "when_hot", "always"):
            raise ValueError(f"aspen: recompiles must be 'when_hot' or 'always', got {parsed.recompiles!r}")
        if parsed.linear_kernel not in LINEAR_KERNELS:
            raise ValueError(f"aspen: linear_kernel must be one of {list(LINEAR_KERNELS)}, got {parsed.linear_kernel!r}")
        if parsed.linear_kernel == "mkl" and not mkl_linear_available():
            raise ValueError("aspen: linear_kernel='mkl' needs MKL's packed GEMM, which this torch does not have")
        if parsed.strict and parsed.recompiles == "when_hot":
            raise ValueError("aspen: strict mode runs nothing in eager, so it takes no recompiles='when_hot'")
        return parsed


def _is_int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
