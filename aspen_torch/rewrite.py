"""Rewrites of the captured aten graph before it is partitioned: activations that a model
writes out op by op, recomposed into the one aten op that tiles fuse. GPT-2's gelu_new,
0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), is aten.gelu(x, approximate="tanh"): as
seven pointwise steps it took ~490 us per 64x3072 tile here (ATen's tanh alone ~380 us),
recomposed it runs as a oneDNN post-op of the linear that produces x."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx as fx

from .capture import CapturedGraph

aten = torch.ops.aten

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def recompose_activations(captured: CapturedGraph) -> CapturedGraph:
    """Replaces every float32 tanh-approximated GELU written out with pow and tanh by
    aten.gelu(approximate="tanh"), in place; returns `captured`."""
    graph = captured.graph_module.graph
    replaced = False
    for node in list(graph.nodes):
        x = _tanh_gelu_input(node)
        if x is None:
            continue
        with graph.inserting_before(node):
            gelu = graph.call_function(aten.gelu.default, (x,), {"approximate": "tanh"})
        gelu.meta = dict(node.meta)  # its value, and the source line strict mode reports
        node.replace_all_uses_with(gelu)
        replaced = True
    if replaced:
        graph.eliminate_dead_code()
        captured.graph_module.recompile()
    return captured


def _call(node: object, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target == target


def _with_scalar(node: object, target) -> Optional[tuple[fx.Node, float]]:
    """(tensor, number) of node = target(tensor, number) or target(number, tensor)."""
    if not _call(node, target) or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    for tensor, number in ((a, b), (b, a)):
        if isinstance(tensor, fx.Node) and isinstance(number, (int, float)) and not isinstance(number, bool):
            return tensor, float(number)
    return None


def _close(value: float, expected: float) -> bool:
    return abs(value - expected) <= 1e-7 * abs(expected)


def _tanh_gelu_input(node: fx.Node) -> Optional[fx.Node]:
    """x if `node` computes (x * 0.5) * (tanh(sqrt(2/pi) * (x + x^3 * 0.044715)) + 1) on
    float32, in any operand order; else None."""
    if not _call(node, aten.mul.Tensor) or len(node.args) != 2 or node.kwargs:
        return None
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
        return None
    for half, inner in (node.args, node.args[::-1]):
        halved, one_plus = _with_scalar(half, aten.mul.Tensor), _with_scalar(inner, aten.add.Tensor)
        if halved is None or one_plus is None or halved[1] != 0.5 or one_plus[1] != 1.0:
            continue
        x, tanh = halved[0], one_plus[0]
        if not _call(tanh, aten.tanh.default):
            continue
        scaled = _with_scalar(tanh.args[0], aten.mul.Tensor)
        if scaled is None or not _close(scaled[1], _SQRT_2_OVER_PI):
            continue
        total = scaled[0]
        if not _call(total, aten.add.Tensor) or len(total.args) != 2 or total.kwargs or x not in total.args:
            continue
        cubed = _with_scalar(total.args[1] if total.args[0] is x else total.args[0], aten.mul.Tensor)
        if cubed is None or not _close(cubed[1], 0.044715):
            continue
        power = cubed[0]
        if _call(power, aten.pow.Tensor_Scalar) and power.args == (x, 3):
            return x
    return None
