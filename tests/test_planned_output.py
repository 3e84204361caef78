"""Planned outputs: a kernel that returns a fresh tensor (oneDNN's conv and linear) allocates
it in the tile's output view, and falls back to a copy wherever that would not be right."""
from __future__ import annotations

import threading

import pytest
import torch

from aspen_torch import _C


def write(view, sizes, strides, inputs=(), scratch_bytes=0):
    value = torch.randn(sizes)
    took = _C.write_through_planned_output(view, list(inputs), list(sizes), list(strides), value, scratch_bytes)
    assert torch.equal(view, value), "the view holds the kernel's result either way"
    return took


def test_a_dense_view_is_the_allocation():
    buffer = torch.zeros(4, 6, 5)
    assert write(buffer[1:3], (2, 6, 5), (30, 5, 1))


def test_a_channels_last_view_is_the_allocation():
    buffer = torch.zeros(3, 8, 4, 5).to(memory_format=torch.channels_last)
    view = buffer[1:2]
    assert write(view, tuple(view.shape), view.stride())


def test_the_same_bytes_in_another_layout_are_rewritten_in_the_views_layout():
    view = torch.zeros(2, 8, 4, 5).to(memory_format=torch.channels_last)
    assert write(view, (2, 8, 4, 5), (160, 20, 5, 1)), "the allocation took the view's bytes"


def test_a_strided_view_gets_a_copy():
    buffer = torch.zeros(1, 32, 4, 4).to(memory_format=torch.channels_last)
    view = buffer[:, 8:24]  # a channel block of a channels-last buffer
    assert not write(view, tuple(view.shape), torch.empty(1, 16, 4, 4).stride())


def test_only_an_allocation_of_the_views_size_takes_it():
    view = torch.zeros(2, 6)
    assert write(view, (2, 6), (6, 1), scratch_bytes=100), "a scratchpad of another size passes through"
    assert not write(view, (2, 6), (6, 1), scratch_bytes=48), \
        "a scratchpad of the view's size, allocated first, takes it, is freed without freeing it, and " \
        "the output is copied"
    assert write(view, (2, 6), (6, 1))


def test_a_view_overlapping_an_input_is_not_offered():
    buffer = torch.zeros(10, 4)
    view, input_ = buffer[2:6], buffer[5:9]
    assert not write(view, (4, 4), (4, 1), inputs=[input_])
    assert write(view, (4, 4), (4, 1), inputs=[buffer[6:10]])


def test_other_threads_and_later_allocations_are_untouched():
    view = torch.zeros(64, 64)
    assert write(view, (64, 64), (64, 1))
    later = torch.empty(64, 64)
    assert later.data_ptr() != view.data_ptr()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.empty(64, 64).data_ptr()))
    thread.start()
    thread.join()
    assert seen[0] != view.data_ptr()


def test_a_non_cpu_view_is_refused():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(RuntimeError, match="CPU"):
        _C.write_through_planned_output(torch.zeros(2, device="cuda"), [], [2], [1], torch.zeros(2))
