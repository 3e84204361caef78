"""Weight prepacking at compile time, as inductor's freezing does: oneDNN's blocked layouts,
and for linears, where this CPU runs it faster, MKL's packed GEMM.

oneDNN picks a layout from the problem shape and the thread count, and a DSE runs
with one thread, so packing happens under one thread for the exact shape a tile
will see. Then no tile reorders a weight (tests/test_backend.py checks oneDNN's log).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

from .. import _C

log = logging.getLogger("aspen_torch")

LINEAR_KERNELS = ("auto", "onednn", "mkl")


@contextlib.contextmanager
def one_aten_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pack_conv_weight(weight: torch.Tensor, padding: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                     groups: int, input_size: Sequence[int]) -> torch.Tensor:
    with one_aten_thread():
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight.contiguous(), list(padding), list(stride), list(dilation), groups, list(input_size))


def pack_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` is [out_features, in_features]; `rows` the tile's batch of input rows."""
    with one_aten_thread():
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


def pack_mkl_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` [out, in] packed for MKL's GEMM of `rows` rows: a 1x1 convolution's, whose
    source is mostly a fresh tensor (batch norm folded in) that no plan holds, so it is not
    kept and the packing not shared (graphs with symbolic sizes, whose plans would share
    it, run oneDNN's convolutions)."""
    with one_aten_thread():
        return _C.pack_mkl_linear_weight(weight, rows)


def pack_mkl_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` is [out_features, in_features]; MKL documents a packing for products of the
    rows it was made for only (other rows run addmm on the unpacked weight: run_mkl_linear)."""
    packed = pack_mkl_weight(weight, rows)
    # It cannot be unpacked, so it keeps its source to be checked against (PackedWeights._shared).
    # The source is a view of the plan's own weights, which the plan's tiles read anyway.
    packed.aspen_source = weight
    return packed


def mkl_packing_serves(packed: torch.Tensor, weight: torch.Tensor, rows: int) -> bool:
    """Whether `packed`, made for other rows, multiplies `rows` rows by `weight` as addmm does.
    MKL documents a packing for the rows it was made for only; this torch's MKL computes any
    row count from it (checked over 192 shapes x made-for x used-at rows: bitwise equal, or
    for 1-3 rows another summation order), and a row part of a tile (16 of its 128 rows) runs
    there at 134-166 GFLOP/s against addmm's 64-97. Each packing is checked before its parts
    rely on it, with random rows: a layout that depended on the rows would give garbage."""
    x = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(rows))
    with one_aten_thread():
        got = _C.mkl_packed_linear(x, packed, weight.shape[0])
    expected = x @ weight.t()
    return bool((got - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max())))


def mkl_linear_available() -> bool:
    return torch.backends.mkl.is_available() and _C.mkl_packed_gemm_available()


def fastest_linear_kernel(rows: int = 128, k: int = 768, n: int = 768, rounds: int = 3, calls: int = 3) -> str:
    """'mkl' where MKL's packed GEMM beats oneDNN's packed linear by 2% on one thread, else
    'onednn': the fastest of `rounds` x `calls` interleaved calls of each, at BERT-base's
    attention projections by default. Which wins depends on the host: MKL by 5-15% on the
    Intel host of the eighteenth session and ~12% on an AMD Zen 3 (AVX2), oneDNN by ~2x on
    an earlier AVX-512 AMD host. 3 x 3 calls take ~0.04 s and find each kernel's best within
    1-2% of 7 x 4 (0.12 s, paid by a process's first compile that packs a linear)."""
    if not mkl_linear_available():
        return "onednn"
    x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
    with one_aten_thread(), torch.no_grad():
        onednn_weight = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        mkl_weight = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
        kernels = {"onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, onednn_weight, b, "none", [], ""),
                   "mkl": lambda: torch.ops.mkl._mkl_linear(x, mkl_weight, w, b, rows)}
        best = {name: float("inf") for name in kernels}
        for _ in range(rounds):
            for name, kernel in kernels.items():
                for _ in range(calls):
                    start = time.perf_counter()
                    kernel()
                    best[name] = min(best[name], time.perf_counter() - start)
    choice = "mkl" if best["mkl"] < 0.98 * best["onednn"] else "onednn"
    log.info("aspen: packed linears on %s (one thread, %dx%dx%d: oneDNN %.1f us, MKL %.1f us)",
             choice, rows, k, n, best["onednn"] * 1e6, best["mkl"] * 1e6)
    return choice


class PackedWeights:
    """Packed weights shared by plans. Under dynamic shapes a plan is made per input
    shape: a BERT served at many sequence lengths would otherwise hold one packed copy of
    every linear per length (oneDNN's linear layout does not depend on the rows, so one
    packing serves all). A packing is found by the source's shape, the packing arguments
    and the source's sum, and taken only if it unpacks to exactly the source (an MKL
    packing, which cannot be unpacked, if the source it keeps equals it), so a new weight
    at a freed one's address is never mistaken for it; it lives as long as some plan holds
    it."""

    def __init__(self) -> None:
        self._packed: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()  # recompiles for other weights may run on several threads
        self._fastest_linear: Optional[str] = None  # measured on first need, once per process

    def __len__(self) -> int:
        """Packings alive (held by some plan)."""
        return len(self._packed)

    def linear_kernel(self, requested: str) -> str:
        """The packed linear kernel for option `requested`: 'onednn', 'mkl', or for 'auto'
        the faster on this CPU."""
        if requested != "auto":
            return requested
        with self._lock:
            if self._fastest_linear is None:
                self._fastest_linear = fastest_linear_kernel()
            return self._fastest_linear

    def linear(self, weight: torch.Tensor, rows: int) -> torch.Tensor:
        return self._shared(("linear",), weight, lambda: pack_linear_weight(weight, rows),
                            lambda packed: torch.equal(packed.to_dense(), weight))

    def mkl_linear(self, weight: torch.Tensor, rows: int) -> torch.Tensor:
        """One packing per row count: unlike oneDNN's, MKL's is documented for its rows only."""
        return self._shared(("mkl_linear", rows), weight, lambda: pack_mkl_linear_weight(weight, rows),
                            lambda packed: torch.equal(packed.aspen_source, weight))

    def mkl_packing_serves(self, packed: torch.Tensor, rows: Iterable[int]) -> bool:
        """Whether MKL packing `packed` serves products of each of `rows` rows (checked once per
        packing and row count)."""
        with self._lock:
            checked = packed.__dict__.setdefault("aspen_serves_rows", {})
            for r in rows:
                if r not in checked:
                    checked[r] = mkl_packing_serves(packed, packed.aspen_source, r)
            return all(checked[r] for r in rows)

    def conv(self, weight: torch.Tensor, padding: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
             groups: int, input_size: Sequence[int]) -> torch.Tensor:
        args = ("conv", tuple(padding), tuple(stride), tuple(dilation), groups, tuple(input_size))
        return self._shared(args, weight, lambda: pack_conv_weight(weight, padding, stride, dilation, groups, input_size),
                            lambda packed: torch.equal(packed.to_dense(), weight))

    def _shared(self, args: tuple, weight: torch.Tensor, pack: Callable[[], torch.Tensor],
                packs_weight: Callable[[torch.Tensor], bool]) -> torch.Tensor:
        key = (*args, tuple(weight.shape), weight.dtype, float(weight.sum()))
        with self._lock:
            packed = self._packed.get(key)
            if packed is not None and packs_weight(packed):
                return packed
            packed = pack()
            self._packed[key] = packed
            return packed


# One for the process, as the runtime is: the graphs dynamo compiles for a model's first
# shapes, its dynamic-shape plans, and other instances with the same weights share packings.
SHARED_PACKS = PackedWeights()
