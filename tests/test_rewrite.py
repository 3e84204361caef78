"""Rewrites of the captured aten graph: the tanh GELU written out op by op (GPT-2's gelu_new,
transformers' FastGELU, BLOOM's) becomes aten.gelu(approximate="tanh"), x sigmoid(a x)
becomes silu (CLIP's quick_gelu: silu(a x) / a), all fused into the linear before them;
near misses stay."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_eager
from torch.fx.experimental.proxy_tensor import make_fx

from aspen_torch.capture import CapturedGraph
from aspen_torch.rewrite import recompose_activations

aten = torch.ops.aten


def gelu_new(x: torch.Tensor, cube_coefficient: float = 0.044715) -> torch.Tensor:
    """transformers' NewGELUActivation (GPT-2's "gelu_new")."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + cube_coefficient * torch.pow(x, 3.0))))


def fast_gelu(x: torch.Tensor, square_coefficient: float = 0.044715) -> torch.Tensor:
    """transformers' FastGELUActivation ("gelu_fast")."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + square_coefficient * x * x)))


def bloom_gelu(x: torch.Tensor) -> torch.Tensor:
    """BLOOM's bias GELU (transformers' bloom_gelu_forward): sqrt(2/pi) cut to 8 digits."""
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


TANH_GELUS = [gelu_new, fast_gelu, bloom_gelu]


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """transformers' QuickGELUActivation (CLIP's "quick_gelu")."""
    return x * torch.sigmoid(1.702 * x)


def swish(x: torch.Tensor) -> torch.Tensor:
    """SiLU written out."""
    return torch.sigmoid(x) * x


def rewritten_targets(fn, *inputs) -> list:
    captured = recompose_activations(CapturedGraph(make_fx(fn)(*inputs), {}))
    return [n.target for n in captured.graph_module.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("written_out", TANH_GELUS, ids=lambda f: f.__name__)
def test_written_out_tanh_gelu_becomes_one_aten_gelu(written_out):
    x = torch.randn(4, 8)
    targets = rewritten_targets(lambda x: written_out(x) + 1, x)
    assert targets == [aten.gelu.default, aten.add.Tensor]
    torch.testing.assert_close(F.gelu(x, approximate="tanh"), written_out(x), rtol=1e-6, atol=1e-6)


def test_written_out_swish_becomes_silu():
    x = torch.randn(4, 8)
    assert rewritten_targets(swish, x) == [aten.silu.default]
    assert rewritten_targets(quick_gelu, x) == [aten.mul.Tensor, aten.silu.default, aten.mul.Tensor]
    for written_out in (swish, quick_gelu):
        captured = recompose_activations(CapturedGraph(make_fx(written_out)(x), {}))
        torch.testing.assert_close(captured.graph_module(x), written_out(x), rtol=1e-6, atol=1e-6)


def test_swish_near_misses_stay_as_written():
    def sigmoid_used_twice(x):
        gate = torch.sigmoid(2.0 * x)
        return x * gate, gate

    x, y = torch.randn(4, 8), torch.randn(4, 8)
    for fn, inputs in [(lambda x, y: x * torch.sigmoid(y), (x, y)),
                       (lambda x, y: y * torch.sigmoid(1.702 * x), (x, y)),
                       (lambda x: x * torch.sigmoid(0.0 * x), (x,)),
                       (sigmoid_used_twice, (x,)),
                       (quick_gelu, (x.double(),))]:
        assert aten.silu.default not in rewritten_targets(fn, *inputs)


def test_near_misses_stay_as_written():
    x = torch.randn(4, 8)
    assert aten.gelu.default not in rewritten_targets(lambda x: gelu_new(x, cube_coefficient=0.05), x)
    assert aten.gelu.default not in rewritten_targets(lambda x: fast_gelu(x, square_coefficient=0.05), x)
    assert aten.gelu.default not in rewritten_targets(lambda x: gelu_new(x).double(), x.double())
    # y in place of one of the x's: not a GELU of anything.
    assert aten.gelu.default not in rewritten_targets(
        lambda x, y: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * torch.pow(x, 3.0)))),
        x, torch.randn(4, 8))
    assert aten.gelu.default not in rewritten_targets(
        lambda x, y: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * y))), x, torch.randn(4, 8))
    assert aten.gelu.default not in rewritten_targets(
        lambda x, y: 0.5 * x * (1.0 + torch.tanh(y * 0.7978845608 * (1.0 + 0.044715 * x * x))), x, torch.randn(4, 8))


def test_intermediates_used_elsewhere_are_kept():
    def fn(x):
        inner = x + 0.044715 * torch.pow(x, 3.0)
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * inner)), inner

    x = torch.randn(4, 8)
    targets = rewritten_targets(fn, x)
    assert aten.gelu.default in targets and aten.pow.Tensor_Scalar in targets and aten.tanh.default not in targets
    captured = recompose_activations(CapturedGraph(make_fx(fn)(x), {}))
    for got, want in zip(captured.graph_module(x), fn(x)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


class Mlp(nn.Module):
    """A transformer's MLP block (GPT-2's, BLOOM's) with its activation written out."""

    def __init__(self, activation):
        super().__init__()
        self.up, self.down, self.activation = nn.Linear(64, 256), nn.Linear(256, 64), activation

    def forward(self, x):
        return x + self.down(self.activation(self.up(x)))


@pytest.mark.parametrize("written_out", [*TANH_GELUS, quick_gelu, swish], ids=lambda f: f.__name__)
def test_mlp_matches_eager_with_its_activation_fused_into_the_linear(written_out):
    x = torch.randn(2, 40, 64)
    x[0, 1, 2] = float("nan")
    report = assert_matches_eager(Mlp(written_out).eval(), x)
    assert set(report.tiles_per_op) == {"aten.addmm.default"}, report.tiles_per_op
