"""Rewrites of the captured aten graph: GPT-2's gelu_new, written out with pow and tanh,
becomes aten.gelu(approximate="tanh"), fused into the linear before it; near misses stay."""
from __future__ import annotations

import math

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


def rewritten_targets(fn, *inputs) -> list:
    captured = recompose_activations(CapturedGraph(make_fx(fn)(*inputs), {}))
    return [n.target for n in captured.graph_module.graph.nodes if n.op == "call_function"]


def test_gelu_new_becomes_one_tanh_gelu():
    targets = rewritten_targets(lambda x: gelu_new(x) + 1, torch.randn(4, 8))
    assert targets == [aten.gelu.default, aten.add.Tensor]


def test_near_misses_stay_as_written():
    x = torch.randn(4, 8)
    assert aten.gelu.default not in rewritten_targets(lambda x: gelu_new(x, cube_coefficient=0.05), x)
    assert aten.gelu.default not in rewritten_targets(lambda x: gelu_new(x).double(), x.double())
    # y in place of one of the x's: not a GELU of anything.
    assert aten.gelu.default not in rewritten_targets(
        lambda x, y: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * torch.pow(x, 3.0)))),
        x, torch.randn(4, 8))


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


class Gpt2Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(64, 256), nn.Linear(256, 64)

    def forward(self, x):
        return x + self.down(gelu_new(self.up(x)))


def test_gpt2_mlp_matches_eager_with_its_gelu_fused_into_the_linear():
    x = torch.randn(2, 40, 64)
    x[0, 1, 2] = float("nan")
    report = assert_matches_eager(Gpt2Mlp().eval(), x)
    assert set(report.tiles_per_op) <= {"aten.addmm.default", "aten.gelu.default"}, report.tiles_per_op
    torch.testing.assert_close(F.gelu(x, approximate="tanh"), gelu_new(x), rtol=1e-6, atol=1e-6, equal_nan=True)
