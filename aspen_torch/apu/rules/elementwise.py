"""Pointwise ops: fused as epilogues of the tiles producing their input when safe, else tiled alone."""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from ..lower import LoweringContext, node_meta
from ..policy import MEMORY_BOUND_FLOPS_PER_ELEMENT, split_dims
from ..registry import RULES, float32_only
from .generic import lower_elementwise, named_schema_args
from ..tile_graph import EpilogueStep, PointwiseOp, Region, Tile, TileKind

aten = torch.ops.aten


def lower_pointwise(node: fx.Node, ctx: LoweringContext, op: PointwiseOp, primary, operand=None,
                    a: float = 0.0, b: float = 0.0, swapped: PointwiseOp | None = None):
    """Lowers out = op(primary, operand). `swapped` is the op computing the same value with
    the inputs exchanged (ADD for ADD, RSUB for SUB); it lets either input host the epilogue.
    Other dtypes than float32 (masks, positions) run as generic elementwise tiles."""
    if float32_only(node) is not None:
        return lower_elementwise(node, ctx)
    if ctx.try_fuse_pointwise(node, primary, op, operand, a, b):
        return ctx.values[node]
    if swapped is not None and ctx.try_fuse_pointwise(node, operand, swapped, primary, a, b):
        return ctx.values[node]
    out = ctx.new_buffer(node)
    shape = out.shape
    primary_ref = ctx.expand_to(ctx.ref(primary), shape)
    operand_ref = ctx.expand_to(ctx.ref(operand), shape) if operand is not None else None
    numel = node_meta(node).numel()
    parts = ctx.policy.num_tiles(numel * MEMORY_BOUND_FLOPS_PER_ELEMENT, max(1, numel))
    split = (0, 2, 3, 1) if len(shape) == 4 else tuple(range(len(shape)))
    for box in split_dims(shape, split, parts):
        inputs = [Region(primary_ref, box)]
        if operand_ref is not None:
            inputs.append(Region(operand_ref, box))
        step = EpilogueStep(op, 2 if operand_ref is not None else None, a, b)
        tile = Tile(TileKind.POINTWISE, Region(out, box), inputs, (), [step], str(node.target), node.name)
        ctx.add_tile(tile, fusible_for=node)
    return out


def _scalar_only(*positions: int):
    def check(node: fx.Node, is_frozen):
        for p in positions:
            if p < len(node.args) and isinstance(node.args[p], fx.Node):
                return "non-constant bounds"
        return None

    return check


@RULES.register(aten.relu.default)
def lower_relu(node, ctx):
    return lower_pointwise(node, ctx, PointwiseOp.RELU, node.args[0])


@RULES.register(aten.hardtanh.default, check=_scalar_only(1, 2))
def lower_hardtanh(node, ctx):
    lo = node.args[1] if len(node.args) > 1 else -1.0
    hi = node.args[2] if len(node.args) > 2 else 1.0
    return lower_pointwise(node, ctx, PointwiseOp.CLAMP, node.args[0], a=float(lo), b=float(hi))


def _clamp_bounds(node: fx.Node) -> tuple:
    """(min, max) of clamp, clamp_min or clamp_max; None where there is no bound."""
    args = named_schema_args(node)
    return args.get("min"), args.get("max")


@RULES.register(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default, check=_scalar_only(1, 2))
def lower_clamp(node, ctx):
    """A missing bound is an infinite one: clamp(x, lo, inf) is clamp_min(x, lo), NaN included."""
    lo, hi = _clamp_bounds(node)
    return lower_pointwise(node, ctx, PointwiseOp.CLAMP, node.args[0], a=-math.inf if lo is None else float(lo),
                           b=math.inf if hi is None else float(hi))


@RULES.register(aten.silu.default)
def lower_silu(node, ctx):
    return lower_pointwise(node, ctx, PointwiseOp.SILU, node.args[0])


@RULES.register(aten.sigmoid.default)
def lower_sigmoid(node, ctx):
    return lower_pointwise(node, ctx, PointwiseOp.SIGMOID, node.args[0])


@RULES.register(aten.hardswish.default)
def lower_hardswish(node, ctx):
    return lower_pointwise(node, ctx, PointwiseOp.HARDSWISH, node.args[0])


UNARY = {
    aten.tanh.default: PointwiseOp.TANH, aten.abs.default: PointwiseOp.ABS, aten.neg.default: PointwiseOp.NEG,
    aten.exp.default: PointwiseOp.EXP, aten.sqrt.default: PointwiseOp.SQRT, aten.rsqrt.default: PointwiseOp.RSQRT,
}


@RULES.register(*UNARY)
def lower_unary(node, ctx):
    return lower_pointwise(node, ctx, UNARY[node.target], node.args[0])


def _check_gelu(node: fx.Node, is_frozen):
    approximate = node.kwargs.get("approximate", "none")
    return None if approximate in ("none", "tanh") else f"gelu approximate={approximate!r}"


@RULES.register(aten.gelu.default, check=_check_gelu)
def lower_gelu(node, ctx):
    tanh = node.kwargs.get("approximate", "none") == "tanh"
    return lower_pointwise(node, ctx, PointwiseOp.GELU, node.args[0], a=1.0 if tanh else 0.0)


def _alpha(node: fx.Node) -> float:
    return float(node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1))


@RULES.register(aten.add.Tensor, aten.add.Scalar)
def lower_add(node, ctx):
    return lower_pointwise(node, ctx, PointwiseOp.ADD, node.args[0], node.args[1], a=_alpha(node),
                           swapped=PointwiseOp.ADD if _alpha(node) == 1 else None)


@RULES.register(aten.sub.Tensor, aten.sub.Scalar)
def lower_sub(node, ctx):
    return lower_pointwise(node, ctx, PointwiseOp.SUB, node.args[0], node.args[1], a=_alpha(node),
                           swapped=PointwiseOp.RSUB if _alpha(node) == 1 else None)


@RULES.register(aten.mul.Tensor, aten.mul.Scalar)
def lower_mul(node, ctx):
    return lower_pointwise(node, ctx, PointwiseOp.MUL, node.args[0], node.args[1], swapped=PointwiseOp.MUL)


def _check_div(node: fx.Node, is_frozen):
    return "rounding_mode" if node.kwargs.get("rounding_mode") is not None else None


@RULES.register(aten.div.Tensor, aten.div.Scalar, check=_check_div)
def lower_div(node, ctx):
    return lower_pointwise(node, ctx, PointwiseOp.DIV, node.args[0], node.args[1])
