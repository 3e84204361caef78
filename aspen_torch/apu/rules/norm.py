"""Batch norm in eval: folded into the preceding convolution's weights, or a per-channel
affine of its own. Group norm: whole images per tile, by ATen's kernel. Batch norm from
the batch's own statistics (instance norm, batch norm without running statistics): blocks
of channels, by ATen's kernel."""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx

from ..lower import LoweringContext, node_meta
from ..registry import RULES, float32_only
from ..tile_graph import Box, PointwiseOp, TensorRef, full_box
from .elementwise import lower_pointwise
from .generic import aten_tiles, check_normalized_output_only, row_blocks
from .layout import copy_to_new_buffer

aten = torch.ops.aten
BATCH_NORM = aten._native_batch_norm_legit_no_training.default


def batch_norm_affine(ctx: LoweringContext, node: fx.Node) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(scale, shift) per channel such that bn(x) = x * scale + shift, or None if not all frozen."""
    _, gamma, beta, mean, var, _, eps = node.args
    mean, var = ctx.constant(mean), ctx.constant(var)
    gamma_t = ctx.constant(gamma) if gamma is not None else None
    beta_t = ctx.constant(beta) if beta is not None else None
    if mean is None or var is None or (gamma is not None and gamma_t is None) or (beta is not None and beta_t is None):
        return None
    scale = torch.rsqrt(var.double() + eps)
    if gamma_t is not None:
        scale = scale * gamma_t.double()
    shift = -mean.double() * scale
    if beta_t is not None:
        shift = shift + beta_t.double()
    return scale, shift


def absorb_batch_norm(conv: fx.Node, ctx: LoweringContext, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """Folds conv's sole consumer, if an eval batch norm with frozen statistics, into its weight and bias.

    Returns (weight, bias, the batch norm node or None). The scale and shift are computed
    in float64; each weight is then multiplied by its channel's scale rounded to the
    weight's dtype, within an ulp of the float64 product (ResNet-50's 25M weights in
    float64 took ~0.1 s of every compile, most of it faulting in the double copies).
    """
    users = list(conv.users)
    if len(users) != 1 or users[0].target is not BATCH_NORM or users[0].args[0] is not conv:
        return weight, bias, None
    affine = batch_norm_affine(ctx, users[0])
    if affine is None:
        return weight, bias, None
    scale, shift = affine
    folded_weight = weight * scale.to(weight.dtype).reshape(-1, 1, 1, 1)
    folded_bias = (shift if bias is None else bias.double() * scale + shift).to(weight.dtype)
    return folded_weight, folded_bias, users[0]


def _check_batch_norm(node: fx.Node, is_frozen):
    if any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users):
        return "uses the batch statistics outputs"
    if not all(is_frozen(a) for a in node.args[1:5] if isinstance(a, fx.Node)):
        return "batch norm parameters are not frozen"
    if node_meta(node).dim() < 2:
        return "batch norm of a 1-d input"
    return float32_only(node)


@RULES.register(BATCH_NORM, check=_check_batch_norm)
def lower_batch_norm(node: fx.Node, ctx: LoweringContext):
    scale, shift = batch_norm_affine(ctx, node)
    rank = node_meta(node).dim()
    channel_shape = (-1,) + (1,) * (rank - 2)
    scale = scale.float().reshape(channel_shape)
    shift = shift.float().reshape(channel_shape)
    out = lower_pointwise(node, ctx, PointwiseOp.MUL, node.args[0], scale)
    ctx.append_epilogue(node, PointwiseOp.ADD, shift, a=1.0)
    return (out, None, None)


@RULES.register(aten.native_group_norm.default, check=check_normalized_output_only)
def lower_group_norm(node: fx.Node, ctx: LoweringContext):
    """Tiles over the batch (a group spans all of an image's positions), each telling the
    kernel its own batch count. The kernel needs its input dense (contiguous, or 4-d
    channels-last), which a 1-d convolution's [batch, channels, length] view is not: copied."""
    shape = tuple(node_meta(node).shape)
    xref = ctx.ref(node.args[0])
    meta = xref.meta()
    if not (meta.is_contiguous() or (meta.dim() == 4 and meta.is_contiguous(memory_format=torch.channels_last))):
        xref = copy_to_new_buffer(ctx, xref, shape, f"{node.name}_input", str(node.target))
    out = ctx.new_buffer(node, shape, channels_last=False)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        return box if i == 0 else full_box(ref.shape)

    boxes = row_blocks(node, ctx, shape, tuple(range(1, len(shape))))
    out = aten_tiles(node, ctx, out, boxes, region, operands={0: xref},
                     sizes_of=lambda box: {3: box[0][1] - box[0][0]})
    return (out, None, None)


@RULES.register(aten._native_batch_norm_legit.no_stats, check=check_normalized_output_only)
def lower_batch_norm_from_batch_statistics(node: fx.Node, ctx: LoweringContext):
    """A channel's statistics span the batch and all positions, so tiles are blocks of
    channels (instance norm reshapes [N, C, ...] to [1, N x C, ...]: blocks of instances)."""
    shape = tuple(node_meta(node).shape)
    out = ctx.new_buffer(node, shape, channels_last=False)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        return box if i == 0 else (box[1],)  # the input, or a per-channel weight or bias

    out = aten_tiles(node, ctx, out, row_blocks(node, ctx, shape, (0, *range(2, len(shape)))), region)
    return (out, None, None)
