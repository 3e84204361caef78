"""Fused attention tiles over (batch, head, query block).

SDPA on fp32 CPU tensors reaches the aten graph as
aten._scaled_dot_product_flash_attention_for_cpu. Run as one tile kind, scores and
probabilities of a block never leave the cache, the permuted Q/K/V projections are
read through their strides (no copies to [batch x heads, seq, dim]), and the output
is laid out as [batch, seq, heads, dim], as eager returns it, so the heads merge
back into the hidden dimension by a view. The tiles run aspen's AVX-512 kernel
(csrc/kernels_attention.cpp) where it applies and ATen's flash kernel otherwise.
BERT-base S128 B8, traced, DSE time: 119 ms for bmm tiles (mask add fused), safe
softmax and the Q/K/V copies; 102 ms with ATen's kernel as tiles (old host); on the
new host 71-77 ms with ATen's kernel, 36 ms with aspen's.
Grouped-query attention (fewer key/value heads, LLaMA) runs in the same tiles.
"""
from __future__ import annotations

import operator
import struct

import torch
import torch.fx as fx

from ..lower import LoweringContext, node_meta
from ..policy import split_dims
from ..registry import RULES, float32_only
from ..tile_graph import Box, Buffer, Region, TensorRef, Tile, TileKind
from .generic import broadcast_box, schema_args
from .layout import copy_to_new_buffer

aten = torch.ops.aten
FLASH_ATTENTION = aten._scaled_dot_product_flash_attention_for_cpu.default
QUERY, KEY, VALUE, DROPOUT, CAUSAL, MASK, SCALE = range(7)


def _check_attention(node: fx.Node, is_frozen):
    args = schema_args(node)
    if args[DROPOUT] != 0.0:
        return "attention dropout"
    if any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users):
        return "uses the logsumexp output"
    query, key, value = (node_meta(a) for a in args[:3])
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return "query, key and value must be 4-d [batch, heads, seq, dim]"
    if key.shape[0] != query.shape[0] or value.shape[:2] != key.shape[:2]:
        return "key or value batch differs from the query's, or value heads from key heads"
    if query.shape[1] % key.shape[1] != 0:
        return "query heads are not a multiple of key/value heads"
    return float32_only(node)


def _rows_in_place(ctx: LoweringContext, arg: fx.Node, name: str, broadcast_ok: bool) -> TensorRef:
    """The argument as the kernel can read it: it takes strides for every dimension but
    the last, which it reads as dense (or, for the mask, broadcast) without checking, so
    an operand strided there (a 4-d input, which aspen keeps channels-last) is copied first."""
    ref = ctx.ref(arg)
    last_stride = ref.meta().stride(-1)
    if ref.shape[-1] == 1 or last_stride == 1 or (broadcast_ok and last_stride == 0):
        return ref
    return copy_to_new_buffer(ctx, ref, ref.shape, name, str(FLASH_ATTENTION))


@RULES.register(FLASH_ATTENTION, check=_check_attention)
def lower_flash_attention(node: fx.Node, ctx: LoweringContext):
    args = schema_args(node)
    operands = {i: _rows_in_place(ctx, args[i], f"{node.name}_{role}", broadcast_ok=i == MASK)
                for i, role in ((QUERY, "query"), (KEY, "key"), (VALUE, "value"), (MASK, "mask"))
                if isinstance(args[i], fx.Node)}
    meta = node_meta(node)
    batch, heads, queries, value_dim = meta.shape
    kv_heads, keys, head_dim = node_meta(args[KEY]).shape[1:]
    group = heads // kv_heads  # grouped-query attention: query head h reads key/value head h // group
    buf = Buffer(node.name, (batch, queries, heads, value_dim), meta.dtype, channels_last=False)
    out = TensorRef.of(buf).then("permute", (0, 2, 1, 3), tuple(meta.shape))
    flops = 2.0 * batch * heads * queries * keys * (head_dim + value_dim)
    # A causal mask is aligned to the first query the kernel sees, so causal tiles keep every query.
    causal = bool(args[CAUSAL])
    cut = (0, 1, 2) if causal else (0, 1, 2, 3)
    most = batch * heads * (1 if causal else queries)
    # The kernel maps a tile's local query head i to its local key/value head
    # i // (query heads / key-value heads). Cutting [batch, kv head, head in group, query]
    # outermost first yields tiles that span whole groups or stay inside one, for which
    # that mapping is the global one.
    grouped = split_dims((batch, kv_heads, group, queries), cut, ctx.policy.num_tiles(flops, most, batch=batch))
    boxes = [(b, (kv0 * group + g0, (kv1 - 1) * group + g1), q, (0, value_dim))
             for b, (kv0, kv1), (g0, g1), q in grouped]

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        if i == QUERY:
            return box[:3] + ((0, ref.shape[3]),)
        if i in (KEY, VALUE):
            kv_range = (box[1][0] // group, (box[1][1] - 1) // group + 1)
            return (box[0], kv_range, (0, keys), (0, ref.shape[3]))
        # The mask broadcasts to the scores [batch, heads, queries, keys].
        return broadcast_box(box[:3] + ((0, keys),), ref.shape)

    scale = args[SCALE]
    ints = (int(causal), _float64_bits(scale if scale is not None else 0.0), int(scale is not None))
    for box in boxes:
        inputs = [Region(operands[i], region(i, operands[i], box)) if i in operands else None
                  for i in (QUERY, KEY, VALUE, MASK)]
        ctx.add_tile(Tile(TileKind.ATTENTION, Region(out, box), inputs, ints, [], str(node.target), node.name),
                     fusible_for=node)
    return out, None


def _float64_bits(value: float) -> int:
    """A float carried in a tile's ints, bit for bit (csrc/tile_spec.h, kAttention)."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]
