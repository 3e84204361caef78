"""Rewrites of the captured aten graph before it is partitioned: activations that a model
writes out op by op, recomposed into the one aten op that tiles fuse. The tanh GELU,
0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), is aten.gelu(x, approximate="tanh"), and
models write it out three ways: GPT-2's gelu_new with pow, transformers' FastGELU and
BLOOM's bias GELU factored as (sqrt(2/pi) x) (1 + 0.044715 x x). As seven pointwise steps
it took ~490 us per 64x3072 tile here (ATen's tanh alone ~380 us); recomposed it runs as
a oneDNN post-op of the linear that produces x. x sigmoid(a x) (SiLU written out, CLIP's
quick_gelu with a = 1.702) is silu(a x) / a: epilogue steps of that linear, where the
product with x, which the in-place epilogue has overwritten, was a tile of its own."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx as fx

from .capture import CapturedGraph

aten = torch.ops.aten

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def recompose_activations(captured: CapturedGraph) -> CapturedGraph:
    """Replaces float32 activations written out op by op, in place: the tanh GELU by
    aten.gelu(approximate="tanh"), x sigmoid(a x) by aten.silu(x) (a = 1) or by
    aten.silu(a x) / a (CLIP's quick_gelu, a = 1.702). Returns `captured`."""
    graph = captured.graph_module.graph
    replaced = False
    for node in list(graph.nodes):
        factors = _float32_product(node)
        if factors is None:
            continue
        with graph.inserting_before(node):
            new = _tanh_gelu(graph, node, factors) or _swish(graph, node, factors)
        if new is not None:
            node.replace_all_uses_with(new)
            replaced = True
    if replaced:
        graph.eliminate_dead_code()
        captured.graph_module.recompile()
    return captured


def _float32_product(node: fx.Node) -> Optional[tuple]:
    """The two factors of a float32 aten.mul.Tensor node (every activation matched here
    ends in one); else None."""
    factors = _operands(node, aten.mul.Tensor)
    value = node.meta.get("val") if factors is not None else None
    return factors if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else None


def _tanh_gelu(graph: fx.Graph, node: fx.Node, factors: tuple) -> Optional[fx.Node]:
    """aten.gelu(x, approximate="tanh") inserted for `node`, if it is x's tanh GELU."""
    x = _tanh_gelu_input(factors)
    return None if x is None else _inserted(graph, node, aten.gelu.default, (x,), {"approximate": "tanh"})


def _swish(graph: fx.Graph, node: fx.Node, factors: tuple) -> Optional[fx.Node]:
    """aten.silu(a x) / a inserted for `node`, if it is x sigmoid(a x)."""
    operands = _swish_operands(factors)
    if operands is None:
        return None
    scaled, a = operands
    silu = _inserted(graph, node, aten.silu.default, (scaled,))
    return silu if a == 1.0 else _inserted(graph, node, aten.mul.Tensor, (silu, 1.0 / a))


def _inserted(graph: fx.Graph, like: fx.Node, target, args: tuple, kwargs: Optional[dict] = None) -> fx.Node:
    """A new call with `like`'s metadata: its value (the same shape and dtype) and the
    source line strict mode reports."""
    new = graph.call_function(target, args, kwargs or {})
    new.meta = dict(like.meta)
    return new


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


def _tanh_gelu_input(factors: tuple) -> Optional[fx.Node]:
    """x if the product of `factors` is (x * 0.5) * (tanh(t) + 1), in any operand order,
    with t the tanh GELU's argument of the same x (_is_tanh_gelu_argument); else None."""
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


def _swish_operands(factors: tuple) -> Optional[tuple[fx.Node, float]]:
    """(a x, a) if the product of `factors` is x * sigmoid(a x) (a x being x itself for
    a = 1), in any operand order, with a a finite nonzero number and the sigmoid used only
    there (else recomposing would compute it twice); else None."""
    for plain, sigmoid in (factors, factors[::-1]):
        if not _call(sigmoid, aten.sigmoid.default) or len(sigmoid.users) != 1 or not isinstance(plain, fx.Node):
            continue
        scaled = sigmoid.args[0]
        if scaled is plain:
            return scaled, 1.0
        times = _with_scalar(scaled, aten.mul.Tensor)
        if times is not None and times[0] is plain and math.isfinite(times[1]) and times[1] != 0.0:
            return scaled, times[1]
    return None
