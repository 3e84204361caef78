"""Weight prepacking at compile time, as inductor's freezing does: oneDNN's blocked layouts.

oneDNN picks a layout from the problem shape and the thread count, and a DSE runs
with one thread, so packing happens under one thread for the exact shape a tile
will see. Then no tile reorders a weight (tests/test_backend.py checks oneDNN's log).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

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
