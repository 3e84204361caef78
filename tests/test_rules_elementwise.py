"""Pointwise rules vs eager, standalone and fused as epilogues, with broadcasting."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_eager

from aspen_torch.apu.tile_graph import TileKind
from aspen_torch.memory_plan import plan_memory

ACTIVATIONS = {
    "relu": torch.relu, "relu6": F.relu6, "hardtanh": lambda x: F.hardtanh(x, -0.5, 0.7),
    "silu": F.silu, "sigmoid": torch.sigmoid, "hardswish": F.hardswish, "tanh": torch.tanh,
    "clamp": lambda x: torch.clamp(x, -0.3, 0.4), "clamp_min": lambda x: x.clamp(min=-0.2),
    "clamp_max": lambda x: x.clamp(max=0.3), "clamp_min_op": lambda x: torch.clamp_min(x, 0.1), "abs": torch.abs, "neg": torch.neg, "exp": torch.exp,
    "sqrt": lambda x: torch.sqrt(x.abs()), "rsqrt": lambda x: torch.rsqrt(x.abs() + 0.1), "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class ConvThen(nn.Module):
    """A conv whose output (or, with conv_first=False, 3x the input) goes through fn(y, *rest)."""

    def __init__(self, fn, conv_first: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fn, self.conv_first = fn, conv_first

    def forward(self, x, *rest):
        return self.fn(self.conv(x) if self.conv_first else x * 3, *rest)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("after_conv", [False, True])
def test_activation(name, after_conv):
    model = ConvThen(ACTIVATIONS[name], conv_first=after_conv).eval()
    report = assert_matches_eager(model, torch.randn(2, 3, 9, 7) * 3)
    if after_conv:
        assert set(report.tiles_per_op) == {"aten.convolution.default"}, "fused as an epilogue"


BINARY = {
    "add": lambda a, b: a + b, "add_alpha": lambda a, b: torch.add(a, b, alpha=0.5), "sub": lambda a, b: a - b,
    "rsub": lambda a, b: b - a, "mul": lambda a, b: a * b, "div": lambda a, b: a / (b.abs() + 1),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("other_shape", [(2, 6, 9, 7), (1, 6, 1, 1), (7,), ()])
def test_binary_with_broadcast(name, other_shape):
    assert_matches_eager(ConvThen(BINARY[name]).eval(), torch.randn(2, 3, 9, 7), torch.randn(other_shape))


def test_scalar_operands_and_chains():
    class Model(nn.Module):
        def forward(self, x):
            y = (x + 1.5) * 2 - 0.25
            return torch.relu(y / 3) + x

    assert_matches_eager(Model(), torch.randn(4, 5, 6))


def test_residual_add_into_conv_epilogue():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return torch.relu(self.b(torch.relu(self.a(x))) + x)

    report = assert_matches_eager(Block().eval(), torch.randn(1, 8, 20, 12))
    assert set(report.tiles_per_op) == {"aten.convolution.default"}


def test_residual_that_lives_on_is_added_where_it_lies():
    """The shortcut is used after the add, so the conv cannot write over it: oneDNN reads it
    as a binary operand and writes the sum into the conv's own buffer."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            x = torch.relu(x)
            return self.head(torch.relu(self.conv(x) + x)), x * 2

    report = assert_matches_eager(Block().eval(), torch.randn(2, 8, 10, 12), options={"tiles_per_dse": 2})
    graph = report.tile_graphs[0]
    conv = [t for t in graph.tiles if t.kind == TileKind.CONV2D and t.node_name == "convolution"]
    assert conv and all(t.epilogue for t in conv), "the residual add runs inside the conv tiles"
    shortcut = conv[0].args[conv[0].epilogue[0].operand].ref.buffer
    memory = plan_memory(graph)
    assert memory.slot_of[conv[0].out.ref.buffer] != memory.slot_of[shortcut]


def test_value_used_twice_is_not_overwritten_by_an_epilogue():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return torch.relu(y) + torch.sigmoid(y), y

    assert_matches_eager(Model().eval(), torch.randn(2, 3, 8, 8))


def test_residual_whose_shortcut_conv_comes_later_fuses_into_the_shortcut():
    """HF ResNet's bottleneck computes the main branch, then the shortcut conv, then adds:
    the add cannot run in the main branch's conv tiles (they come first in the tile order
    and would read a shortcut not yet computed: a cycle), so it runs in the shortcut's."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Conv2d(8, 16, 3, padding=1)
            self.shortcut = nn.Conv2d(8, 16, 1)

        def forward(self, x):
            y = self.main(x)
            y += self.shortcut(x)
            return torch.relu(y)

    report = assert_matches_eager(Block().eval(), torch.randn(2, 8, 12, 10), options={"tiles_per_dse": 4})
    assert set(report.tiles_per_op) == {"aten.convolution.default"}
    graph = report.tile_graphs[0]
    assert all(parent < child for parent, child in graph.edges)


def test_value_added_to_itself_is_not_fused_into_its_conv():
    """y + y reads the conv tiles' own output: a conv tile reads its residual while
    convolving, when that output does not exist yet (wrong before)."""
    model = ConvThen(lambda y: torch.relu(y + y)).eval()
    assert_matches_eager(model, torch.randn(2, 3, 10, 10), options={"min_tile_flops": 1e3})


def test_python_numbers_where_the_schema_says_tensor_promote_as_in_eager():
    """AOTAutograd leaves add.Tensor(x, 0) in the graph (RoBERTa's position ids): the
    number must promote as eager's wrapped numbers do (int32 + 3 stays int32, int32 * 1.5
    is float32), not as a 0-dim int64 or float64 tensor would."""
    class Model(nn.Module):
        def forward(self, ids):
            mask = ids.ne(1).int()
            return (mask + 3) * mask, mask * 1.5

    assert_matches_eager(Model(), torch.randint(0, 4, (3, 17)))  # assert_close compares dtypes too


def test_pointwise_op_with_two_outputs():
    """frexp's mantissa and exponent: one set of tiles per output, over the same boxes."""
    class Model(nn.Module):
        def forward(self, x):
            mantissa, exponent = torch.frexp(x * 3)
            return mantissa + 1, exponent

    report = assert_matches_eager(Model(), torch.randn(6, 40), options={"min_tile_flops": 1, "tiles_per_dse": 2})
    assert report.tiles_per_op["aten.frexp.Tensor"] >= 4
