"""Rewrites of the captured aten graph before it is partitioned: activations that a model
writes out op by op, recomposed into the one aten op that tiles fuse. The tanh GELU,
0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), is aten.gelu(x, approximate="tanh"), and
models write it out three ways: GPT-2's gelu_new with pow, transformers' FastGELU and
BLOOM's bias GELU factored as (sqrt(2/pi) x) (1 + 0.044715 x x). As seven pointwise steps
it took ~490 us per 64x3072 tile here (ATen's tanh alone ~380 us); recomposed it runs as
a oneDNN post-op of the linear that produces x."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx as fx

from .capture import CapturedGraph

aten = torch.ops.aten

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def recompose_activations(captured: CapturedGraph) -> CapturedGraph:
    """Replaces every float32 tanh-approximated GELU written out op by op by
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


def _operands(node: object, target) -> Optional[tuple]:
    """(a, b) of node = target(a, b), no keyword arguments; else None."""
    if not _call(node, target) or len(node.args) != 2 or node.kwargs:
        return None
    return tuple(node.args)


def _with_scalar(node: object, target) -> Optional[tuple[fx.Node, float]]:
    """(tensor, number) of node = target(tensor, number) or target(number, tensor)."""
    operands = _operands(node, target)
    if operands is None:
        return None
    a, b = operands
    for tensor, number in ((a, b), (b, a)):
        if isinstance(tensor, fx.Node) and isinstance(number, (int, float)) and not isinstance(number, bool):
            return tensor, float(number)
    return None


def _close(value: float, expected: float) -> bool:
    return abs(value - expected) <= 1e-7 * abs(expected)


def _tanh_gelu_input(node: fx.Node) -> Optional[fx.Node]:
    """x if `node` computes (x * 0.5) * (tanh(t) + 1) on float32, in any operand order,
    with t the tanh GELU's argument of the same x (_is_tanh_gelu_argument); else None."""
    factors = _operands(node, aten.mul.Tensor)
    value = node.meta.get("val") if factors is not None else None
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
        return None
    for half, inner in (factors, factors[::-1]):
        halved, one_plus = _with_scalar(half, aten.mul.Tensor), _with_scalar(inner, aten.add.Tensor)
        if halved is None or one_plus is None or halved[1] != 0.5 or one_plus[1] != 1.0:
            continue
        x, tanh = halved[0], one_plus[0]
        if _call(tanh, aten.tanh.default) and _is_tanh_gelu_argument(tanh.args[0], x):
            return x
    return None


def _is_tanh_gelu_argument(node: object, x: fx.Node) -> bool:
    """Whether `node` computes sqrt(2/pi) (x + 0.044715 x^3), written either way."""
    return _is_gelu_new_argument(node, x) or _is_factored_argument(node, x)


def _is_gelu_new_argument(node: object, x: fx.Node) -> bool:
    """sqrt(2/pi) * (x + x^3 * 0.044715), x^3 by pow (gelu_new)."""
    scaled = _with_scalar(node, aten.mul.Tensor)
    if scaled is None or not _close(scaled[1], _SQRT_2_OVER_PI):
        return False
    terms = _operands(scaled[0], aten.add.Tensor)
    if terms is None or x not in terms:
        return False
    cubed = _with_scalar(terms[1] if terms[0] is x else terms[0], aten.mul.Tensor)
    if cubed is None or not _close(cubed[1], 0.044715):
        return False
    power = cubed[0]
    return _call(power, aten.pow.Tensor_Scalar) and power.args == (x, 3)


def _is_factored_argument(node: object, x: fx.Node) -> bool:
    """(x * sqrt(2/pi)) * (x * 0.044715 * x + 1), in any operand order (FastGELU, BLOOM)."""
    factors = _operands(node, aten.mul.Tensor)
    if factors is None:
        return False
    for linear, polynomial in (factors, factors[::-1]):
        scaled, one_plus = _with_scalar(linear, aten.mul.Tensor), _with_scalar(polynomial, aten.add.Tensor)
        if scaled is None or one_plus is None or scaled[0] is not x or not _close(scaled[1], _SQRT_2_OVER_PI):
            continue
        square = _operands(one_plus[0], aten.mul.Tensor)
        if one_plus[1] != 1.0 or square is None:
            continue
        for plain, weighted in (square, square[::-1]):
            times = _with_scalar(weighted, aten.mul.Tensor)
            if plain is x and times is not None and times[0] is x and _close(times[1], 0.044715):
                return True
    return False
