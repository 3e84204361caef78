"""A conv tile's relu as oneDNN's post-op: it turns NaN into 0, so a request in which that may
have happened runs again with the relu as a NaN-keeping pass, and its program stays exact."""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aspen_torch import _C
from aspen_torch.execute import CompiledPartition
from helpers import compile_strict

CONV, ADD, RELU = 0, 0, 4


def conv_relu_program(x, weight, bias, out, residual=None):
    """One conv tile, 3x3 with padding 1, then (out += residual) and relu."""
    tensors = [out, x, weight, bias]
    epilogue = [(RELU, -1, 0.0, 0.0)]
    if residual is not None:
        tensors.append(residual)
        epilogue.insert(0, (ADD, 4, 1.0, 0.0))
    return _C.make_program([(CONV, tensors, [1, 1, 1, 1, 1, 1, 1, 1], epilogue, "conv relu")], [])


def channels_last(*sizes):
    return torch.randn(*sizes).contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def runtime():
    return _C.Runtime(2)


@pytest.mark.parametrize("form,nan_in", [(form, nan_in) for form in ("plain", "residual", "in place")
                                          for nan_in in (None, "input", "residual")
                                          if form != "plain" or nan_in != "residual"])
def test_a_relu_that_may_have_lost_a_nan_runs_again_exact(runtime, form, nan_in):
    x, weight, bias = channels_last(2, 16, 7, 6), torch.randn(16, 16, 3, 3) * 0.1, torch.randn(16)
    residual = None if form == "plain" else channels_last(2, 16, 7, 6)
    if nan_in == "input":
        x[1, 3, 2, 4] = float("nan")
    elif nan_in == "residual":
        residual[0, 5, 6, 0] = float("nan")
    expected = F.conv2d(x, weight, bias, padding=1)
    if residual is not None:
        expected = expected + residual
    expected = expected.relu()
    assert (nan_in is None) == (not expected.isnan().any())

    if form == "in place":
        # The output over the residual's own bytes: the first run overwrites them, so the
        # second must copy its inputs in again.
        buffer = torch.empty_like(residual)
        program = conv_relu_program(x, weight, bias, buffer, residual=buffer)
        runtime.run(program, copy_in=[(residual, buffer)])
        out = buffer
    else:
        out = torch.empty_like(expected, memory_format=torch.channels_last)
        program = conv_relu_program(x, weight, bias, out, residual)
        runtime.run(program)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert program.relus_fused == (nan_in is None), "a lost NaN leaves the program's relus exact"

    if nan_in is not None:  # later requests run exact at once
        if form == "in place":
            runtime.run(program, copy_in=[(residual, buffer)])
        else:
            out.fill_(-1.0)
            runtime.run(program)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_an_infinity_that_makes_a_nan_reruns_the_request(runtime):
    """inf * w summed over weights of both signs is NaN in eager too; oneDNN's relu would make it 0."""
    x, weight = channels_last(1, 16, 5, 5), torch.randn(16, 16, 3, 3)
    x[0, :, 2, 2] = float("inf")
    expected = F.conv2d(x, weight, None, padding=1).relu()
    assert expected.isnan().any()
    out = torch.empty_like(expected, memory_format=torch.channels_last)
    program = conv_relu_program(x, weight, None, out)
    runtime.run(program)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert not program.relus_fused


def test_a_compiled_model_fed_a_nan_matches_eager_and_turns_exact():
    """Through torch.compile: clean calls fuse, the call with a NaN reruns (its input copied in
    anew), and later clean calls run the passes and still match eager."""
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU()).eval()
    existing = {id(p) for p in gc.get_objects() if type(p) is CompiledPartition}
    compiled = compile_strict(model, num_dses=2)
    clean, poisoned = torch.randn(2, 8, 10, 9), torch.randn(2, 8, 10, 9)
    poisoned[1, 2, 3, 4] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(compiled(clean), model(clean), rtol=1e-4, atol=1e-4)
        (partition,) = [p for p in gc.get_objects() if type(p) is CompiledPartition and id(p) not in existing]
        assert partition.relus_fused
        expected = model(poisoned)
        assert expected.isnan().any() and not expected[0].isnan().any()
        torch.testing.assert_close(compiled(poisoned), expected, rtol=1e-4, atol=1e-4, equal_nan=True)
        assert not partition.relus_fused
        torch.testing.assert_close(compiled(clean), model(clean), rtol=1e-4, atol=1e-4)
