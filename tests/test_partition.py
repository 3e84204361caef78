"""Partitioning: unsupported ops run in eager (logged) or raise in strict mode, listing every one."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_eager, compile_strict

from aspen_torch import AspenUnsupportedError


class Mixed(nn.Module):
    """aspen-capable convs around ops aspen has no rule for."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = y / (1 + F.pdist(y.flatten(1)).sum())  # pdist: no rule
        y = self.b(y)
        return torch.linalg.matrix_exp(y[..., :4, :4] * 0.1) + 1  # matrix_exp: no rule


def test_fallback_is_correct_and_logged(caplog):
    model = Mixed().eval()
    x = torch.randn(2, 3, 12, 10)
    compiled = torch.compile(model, backend="aspen")
    with caplog.at_level(logging.WARNING, logger="aspen_torch"), torch.no_grad():
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "aten._pdist_forward.default" in messages and "aten.linalg_matrix_exp.default" in messages \
        and "runs in eager" in messages


def test_strict_lists_every_unsupported_op_with_its_source_line():
    with pytest.raises(Exception) as info, torch.no_grad():
        compile_strict(Mixed().eval())(torch.randn(1, 3, 8, 8))
    error = info.value.inner_exception if hasattr(info.value, "inner_exception") else info.value
    assert isinstance(error, AspenUnsupportedError)
    ops = sorted(op for op, _, _ in error.unsupported)
    assert ops == ["aten._pdist_forward.default", "aten.linalg_matrix_exp.default"]
    assert all("test_partition.py" in where for _, _, where in error.unsupported)


def test_side_effecting_ops_keep_their_effect_token_and_run_in_eager():
    """linalg.inv checks for singular input through an effectful op: AOTAutograd threads it
    with an effect token, one more graph input ahead of the frozen weights."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(torch.linalg.inv(torch.relu(x)) + self.a(x))

    model = Model().eval()
    x = torch.randn(3, 4, 4).abs() + torch.eye(4)
    compiled = torch.compile(model, backend="aspen")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        with pytest.raises(torch.linalg.LinAlgError, match="singular"):
            compiled(-x.abs())
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        with pytest.raises(Exception, match="side effect of aten._linalg_check_errors"):
            compile_strict(model)(x)


def test_outputs_keep_eagers_strides_where_a_decomposition_changes_them():
    """torch's baddbmm decomposition returns its bias's strides, eager's baddbmm contiguous
    ones; an output that is a view keeps its own."""
    class Model(nn.Module):
        def forward(self, bias, a, b):
            return torch.baddbmm(bias, a, b), torch.baddbmm(bias, a, b).transpose(1, 2), bias.transpose(1, 2)

    bias = torch.randn(3, 6, 5).transpose(1, 2)
    assert_matches_eager(Model(), bias, torch.randn(3, 5, 4), torch.randn(3, 4, 6))


def test_tensor_literals_are_frozen_constants():
    """A torch.tensor(...) literal in forward (GPT-2, LLaMA) reaches the aten graph as a
    lifted constant behind lift_fresh_copy: folded at compile time, not passed per call."""
    class Model(nn.Module):
        def forward(self, x):
            return x * torch.tensor([1.0, -2.0, 0.5]) + torch.tensor(3.0)

    report = assert_matches_eager(Model(), torch.randn(4, 3))
    assert [ref.shape for ref in report.tile_graphs[0].input_refs] == [(4, 3)]


def test_unsupported_dtype_falls_back_and_strict_names_it():
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval().double()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="aspen")(x), model(x))
        with pytest.raises(Exception, match="dtype torch.float64"):
            compile_strict(model)(x)


def test_training_graph_runs_in_eager_and_strict_raises(caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    x = torch.randn(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="aspen_torch"):
        out = torch.compile(model, backend="aspen")(x)
    out.sum().backward()  # autograd still works: the graph ran in eager
    assert model[0].weight.grad is not None
    assert "training" in caplog.text
    torch._dynamo.reset()
    with pytest.raises(Exception, match="torch.no_grad"):
        compile_strict(model)(x)


def test_options_are_validated():
    with pytest.raises(Exception, match="unknown option"):
        with torch.no_grad():
            torch.compile(nn.ReLU(), backend="aspen", options={"num_dse": 2})(torch.randn(3))
    for bad, match in [({"num_dses": 0}, "num_dses"), ({"num_dses": 2.0}, "num_dses"),
                       ({"tiles_per_dse": "2"}, "tiles_per_dse"), ({"tiles_per_dse": 0}, "tiles_per_dse"),
                       ({"min_tile_flops": "1e6"}, "min_tile_flops"), ({"min_tile_flops": float("nan")}, "min_tile_flops"),
                       ({"strict": 1}, "strict"), ({"recompiles": "never"}, "recompiles"),
                       ({"linear_kernel": "blas"}, "linear_kernel must be one of"),
                       ({"strict": True, "recompiles": "when_hot"}, "strict mode runs nothing in eager")]:
        torch._dynamo.reset()
        with pytest.raises(Exception, match=match):
            with torch.no_grad():
                torch.compile(nn.ReLU(), backend="aspen", options=bad)(torch.randn(3))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="mode='max-autotune' is inductor's"):
        with torch.no_grad():
            torch.compile(nn.ReLU(), backend="aspen", mode="max-autotune")(torch.randn(3))
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(nn.ReLU(), backend="aspen", mode="default")(torch.randn(3))
