"""Weight prepacking at compile time, as inductor's freezing does: oneDNN's blocked layouts.

oneDNN picks a layout from the problem shape and the thread count, and a DSE runs
with one thread, so packing happens under one thread for the exact shape a tile
will see. Then no tile reorders a weight (tests/test_backend.py checks oneDNN's log).
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Callable, Iterator, Sequence

import torch


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


class PackedWeights:
    """Packed weights shared by plans. Under dynamic shapes a plan is made per input
    shape: a BERT served at many sequence lengths would otherwise hold one packed copy of
    every linear per length (oneDNN's linear layout does not depend on the rows, so one
    packing serves all). A packing is found by the source's shape, the packing arguments
    and the source's sum, and taken only if it unpacks to exactly the source, so a new
    weight at a freed one's address is never mistaken for it; it lives as long as some
    plan holds it."""

    def __init__(self) -> None:
        self._packed: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()  # recompiles for other weights may run on several threads

    def __len__(self) -> int:
        """Packings alive (held by some plan)."""
        return len(self._packed)

    def linear(self, weight: torch.Tensor, rows: int) -> torch.Tensor:
        return self._shared(("linear",), weight, lambda: pack_linear_weight(weight, rows))

    def conv(self, weight: torch.Tensor, padding: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
             groups: int, input_size: Sequence[int]) -> torch.Tensor:
        args = ("conv", tuple(padding), tuple(stride), tuple(dilation), groups, tuple(input_size))
        return self._shared(args, weight, lambda: pack_conv_weight(weight, padding, stride, dilation, groups, input_size))

    def _shared(self, args: tuple, weight: torch.Tensor, pack: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (*args, tuple(weight.shape), weight.dtype, float(weight.sum()))
        with self._lock:
            packed = self._packed.get(key)
            if packed is not None and torch.equal(packed.to_dense(), weight):
                return packed
            packed = pack()
            self._packed[key] = packed
            return packed


# One for the process, as the runtime is: the graphs dynamo compiles for a model's first
# shapes, its dynamic-shape plans, and other instances with the same weights share packings.
SHARED_PACKS = PackedWeights()
