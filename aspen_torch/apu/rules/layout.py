"""Layout ops: zero-copy views of the producer's buffer where a view exists, copy tiles where not."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.fx as fx

from ..lower import LoweringContext, node_meta
from ..policy import MEMORY_BOUND_FLOPS_PER_ELEMENT, split_dims, split_range
from ..registry import RULES
from ..tile_graph import AtenCall, Box, Buffer, Region, TensorRef, Tile, TileKind, full_box
from .generic import aten_tiles, elementwise_boxes, named_schema_args, row_blocks, schema_args, wrap_dim

aten = torch.ops.aten


def reshape_ref(node: fx.Node, ctx: LoweringContext, source, shape: Sequence[int]) -> TensorRef:
    ref = ctx.ref(source)
    shape = tuple(node_meta(node).shape)
    view = ref.reshaped(shape)
    if view is not None:
        ctx.keep_fusible_through_view(source, node)
        return view
    # No view exists (e.g. flattening a channels-last or permuted buffer).
    return copy_to_new_buffer(ctx, ref, shape, node.name, str(node.target))


def copy_to_new_buffer(ctx: LoweringContext, ref: TensorRef, shape: Sequence[int], name: str,
                       label: str) -> TensorRef:
    """Copy tiles from `ref` into a new contiguous buffer of `shape` (same number of
    elements, row-major order), each writing its box through a view of it in ref's shape."""
    out = TensorRef.of(Buffer(name, tuple(shape), ref.buffer.dtype))
    _add_copy_tiles(ctx, out.then("view", ref.shape, ref.shape), ref, label, name)
    return out


def _add_copy_tiles(ctx: LoweringContext, dst: TensorRef, src: TensorRef, label: str, name: str) -> None:
    """Copy tiles from `src` to `dst` (same shape), boxes cut over every dim by size."""
    numel = max(1, math.prod(src.shape))
    boxes = split_dims(src.shape, tuple(range(len(src.shape))),
                       ctx.policy.num_tiles(numel * MEMORY_BOUND_FLOPS_PER_ELEMENT, numel))
    for box in boxes:
        ctx.add_tile(Tile(TileKind.COPY, Region(dst, box), [Region(src, box)], (), [], label, name))


@RULES.register(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def lower_view(node, ctx):
    return reshape_ref(node, ctx, node.args[0], node.args[1])


@RULES.register(aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def lower_squeeze(node, ctx):
    return reshape_ref(node, ctx, node.args[0], node_meta(node).shape)


@RULES.register(aten.permute.default)
def lower_permute(node, ctx):
    ref = ctx.ref(node.args[0])
    dims = tuple(d % len(ref.shape) for d in node.args[1])
    ctx.keep_fusible_through_view(node.args[0], node)
    return ref.then("permute", dims, node_meta(node).shape)


@RULES.register(aten.t.default)
def lower_t(node, ctx):
    ref = ctx.ref(node.args[0])
    return ref if len(ref.shape) < 2 else ref.then("permute", (1, 0), node_meta(node).shape)


@RULES.register(aten.expand.default)
def lower_expand(node, ctx):
    return ctx.expand_to(ctx.ref(node.args[0]), node_meta(node).shape)


def _as_strided_args(node: fx.Node) -> tuple[torch.Tensor, list[int], list[int], int]:
    """The input's meta, the sizes and strides, and the storage offset (the input's own when
    the call gives none)."""
    source = node_meta(node.args[0])
    _, size, stride, offset = schema_args(node)
    return source, list(size), list(stride), source.storage_offset() if offset is None else offset


def _restrides_unit_dims_only(node: fx.Node) -> bool:
    """as_strided from decompositions that give a result eager's strides (a channels-last
    pooled [N, C, 1, 1], whose unit dims take any stride): sizes, offset and the strides of
    every dim longer than 1 are the input's own, so each element is the input's element at
    the same index, whatever layout aspen gives the buffer."""
    source, size, stride, start = _as_strided_args(node)
    return tuple(size) == tuple(source.shape) and start == source.storage_offset() \
        and all(n == 1 or a == b for n, a, b in zip(size, stride, source.stride()))


def _storage_order(source: torch.Tensor) -> Optional[list[int]]:
    """The source's dims from outermost to innermost in its storage, if it covers its
    storage span densely without overlap (contiguous, or a permutation of it): then storage
    position `offset + k` holds element k of the source permuted to this order and flattened."""
    order = sorted(range(source.dim()), key=lambda d: (-source.stride(d), d))
    dense_stride = 1
    for d in reversed(order):
        if source.shape[d] != 1 and source.stride(d) != dense_stride:
            return None
        dense_stride *= source.shape[d]
    return order


def _check_as_strided(node: fx.Node, is_frozen):
    if _restrides_unit_dims_only(node):
        return None
    source, size, stride, start = _as_strided_args(node)
    last = start + sum((n - 1) * s for n, s in zip(size, stride))
    if _storage_order(source) is None or start < source.storage_offset() \
            or (0 not in size and last >= source.storage_offset() + source.numel()):
        return "as_strided reading storage outside its input, or of an input with gaps or overlaps in its storage"
    return None


@RULES.register(aten.as_strided.default, check=_check_as_strided)
def lower_as_strided(node, ctx):
    """A strided view of the input's storage (Longformer's overlapping chunks): copy tiles
    over the flattened input in eager's storage order. A tile over output box B reads the
    flat range from B's first to its last element's position and views it with the same
    strides from its own start (as_strided's default offset is the viewed tensor's)."""
    if _restrides_unit_dims_only(node):
        return lower_same_value(node, ctx)
    source, _, stride, offset = _as_strided_args(node)
    base = offset - source.storage_offset()
    order = _storage_order(source)
    ordered = ctx.ref(node.args[0]).then("permute", tuple(order), tuple(source.shape[d] for d in order))
    flat = ordered.reshaped((source.numel(),)) or copy_to_new_buffer(ctx, ordered, (source.numel(),),
                                                                      f"{node.name}_flat", str(node.target))
    out = ctx.new_buffer(node, channels_last=False)
    for box in elementwise_boxes(node, ctx):
        first = base + sum(start * s for (start, _), s in zip(box, stride))
        last = base + sum((stop - 1) * s for (_, stop), s in zip(box, stride))
        span = Region(flat, ((first, max(first, last + 1)),))
        call = AtenCall(node.target, (span, [stop - start for start, stop in box], stride, None))
        ctx.add_tile(Tile(TileKind.ATEN_OP, Region(out, box), [span], (), [], str(node.target), node.name, call),
                     fusible_for=node)
    return out


@RULES.register(aten.clone.default, aten.alias.default, aten.detach.default)
def lower_same_value(node, ctx):
    # Buffers are written once (epilogues mutate only values with a single reader), so a
    # copy, or an as_strided that keeps every element at its index, can share the source.
    ctx.keep_fusible_through_view(node.args[0], node)
    return ctx.ref(node.args[0])


@RULES.register(aten.select.int)
def lower_select(node, ctx):
    ref = ctx.ref(node.args[0])
    dim = node.args[1] % len(ref.shape)
    index = node.args[2] % ref.shape[dim]
    return ref.then("select", (dim, index), node_meta(node).shape)


@RULES.register(aten.cat.default)
def lower_cat(node: fx.Node, ctx: LoweringContext):
    out = ctx.new_buffer(node)
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(out.shape)
    offset = 0
    for src in node.args[0]:
        ref = ctx.ref(src)
        if 0 in ref.shape:
            continue
        size = ref.shape[dim]
        # A copy tile per input, split along the batch so large inputs use every DSE.
        parts = ctx.policy.num_tiles(torch.Size(ref.shape).numel() * MEMORY_BOUND_FLOPS_PER_ELEMENT, ref.shape[0]) if dim != 0 else 1
        for b0, b1 in split_range(ref.shape[0], parts):
            src_box = ((b0, b1),) + full_box(ref.shape)[1:] if dim != 0 else full_box(ref.shape)
            dst_box = tuple((offset, offset + size) if d == dim else src_box[d] for d in range(len(out.shape)))
            tile = Tile(TileKind.COPY, Region(out, dst_box), [Region(ref, src_box)], (), [], str(node.target),
                        node.name)
            ctx.add_tile(tile, fusible_for=node)
        offset += size
    return out


@RULES.register(aten.slice.Tensor)
def lower_slice(node, ctx):
    ref = ctx.ref(node.args[0])
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(ref.shape)
    size = ref.shape[dim]
    start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
    start = min(max(start + size if start < 0 else start, 0), size)
    length = node_meta(node).shape[dim]
    step = node.args[4] if len(node.args) > 4 else 1
    if step == 1 or length == 0:
        return ref.then("narrow", (dim, start, length), node_meta(node).shape)
    return ref.then("slice", (dim, start, length, step), node_meta(node).shape)  # Swin's patch merging: x[:, 0::2]


@RULES.register(aten.copy.default)
def lower_functional_copy(node, ctx):
    """copy(self, src): src broadcast to self's shape in self's dtype (the copy tiles cast);
    self's values are not read."""
    out = ctx.new_buffer(node)
    _add_copy_tiles(ctx, out, ctx.expand_to(ctx.ref(node.args[1]), out.shape), str(node.target), node.name)
    return out


@RULES.register(aten.slice_scatter.default)
def lower_slice_scatter(node, ctx):
    """self with a slice along dim replaced by src (functionalized writes into a slice, e.g.
    circular padding): tiles over the other dims, each whole along dim, reading its box of
    self and of src."""
    out = ctx.new_buffer(node, channels_last=False)
    dim = wrap_dim(named_schema_args(node)["dim"], len(out.shape))
    boxes = row_blocks(node, ctx, out.shape, (dim,))

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        return tuple((0, ref.shape[d]) if d == dim else box[d] for d in range(len(ref.shape)))

    return aten_tiles(node, ctx, out, boxes, region)


@RULES.register(aten.split_with_sizes.default, aten.split.Tensor)
def lower_split(node, ctx):
    ref = ctx.ref(node.args[0])
    dim = (node.args[2] if len(node.args) > 2 else 0) % len(ref.shape)
    pieces, start = [], 0
    for meta in node.meta["val"]:
        length = meta.shape[dim]
        pieces.append(ref.then("narrow", (dim, start, length), meta.shape))
        start += length
    return tuple(pieces)


@RULES.register(aten.unbind.int)
def lower_unbind(node, ctx):
    ref = ctx.ref(node.args[0])
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(ref.shape)
    return tuple(ref.then("select", (dim, i), meta.shape) for i, meta in enumerate(node.meta["val"]))


@RULES.register(aten.constant_pad_nd.default)
def lower_constant_pad(node, ctx):
    """Tiles over the dims it leaves alone (batch and channels of a padded image), each
    padding (or, for negative pads, cropping) its slice whole along the others."""
    pad = node.args[1]
    out = ctx.new_buffer(node)
    rank = len(out.shape)
    padded = {rank - 1 - i // 2 for i, amount in enumerate(pad) if amount != 0}  # pairs run from the last dim back
    boxes = row_blocks(node, ctx, out.shape, padded)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        return tuple((0, ref.shape[d]) if d in padded else box[d] for d in range(rank))

    return aten_tiles(node, ctx, out, boxes, region)


def _check_unfold(node, is_frozen):
    return None if node_meta(node.args[0]).dim() else "unfold of a 0-d tensor"


@RULES.register(aten.unfold.default, check=_check_unfold)
def lower_unfold(node, ctx):
    """Sliding windows (`x.unfold(dim, size, step)`, patch extraction): eager's overlapping
    view becomes a copy. Tiles cut every output dim but the window's own last one; along
    `dim`, windows w0..w1 read input [w0 * step, (w1 - 1) * step + size)."""
    args = named_schema_args(node)
    dim, size, step = args["dimension"] % node_meta(node.args[0]).dim(), args["size"], args["step"]
    out = ctx.new_buffer(node, channels_last=False)
    boxes = row_blocks(node, ctx, out.shape, (len(out.shape) - 1,))

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        (first, stop) = box[dim]
        return tuple((first * step, (stop - 1) * step + size) if d == dim else box[d] for d in range(len(ref.shape)))

    return aten_tiles(node, ctx, out, boxes, region)


def _diagonal_dims(node: fx.Node, rank: int) -> tuple[int, int, int]:
    args = named_schema_args(node)
    return args["offset"], args["dim1"] % rank, args["dim2"] % rank


@RULES.register(aten.diagonal.default)
def lower_diagonal(node, ctx):
    """x.diagonal(offset, dim1, dim2), eager's strided view, becomes a copy: the output is
    x's other dims then the diagonal. A tile over output box (..., [k0, k1)) reads x at its
    box along the other dims and the square [k0, k1) shifted by the offset along dim1 and
    dim2, whose own diagonal (offset 0) is the tile's."""
    rank = node_meta(node.args[0]).dim()
    offset, dim1, dim2 = _diagonal_dims(node, rank)
    others = [d for d in range(rank) if d not in (dim1, dim2)]
    out = ctx.new_buffer(node, channels_last=False)
    boxes = elementwise_boxes(node, ctx)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        at = dict(zip(others, box))
        (k0, k1) = box[-1]
        at[dim1] = (k0 + max(0, -offset), k1 + max(0, -offset))
        at[dim2] = (k0 + max(0, offset), k1 + max(0, offset))
        return tuple(at[d] for d in range(rank))

    return aten_tiles(node, ctx, out, boxes, region, sizes_of=lambda box: {1: 0})


@RULES.register(aten.diag_embed.default)
def lower_diag_embed(node, ctx):
    """Matrices with x's last dim on a diagonal (torch.diag of a vector): tiles cut the other
    output dims, each reading x there, its last dim whole."""
    rank = node_meta(node).dim()
    _, dim1, dim2 = _diagonal_dims(node, rank)
    others = [d for d in range(rank) if d not in (dim1, dim2)]
    out = ctx.new_buffer(node, channels_last=False)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        return tuple(box[d] for d in others) + ((0, ref.shape[-1]),)

    return aten_tiles(node, ctx, out, row_blocks(node, ctx, out.shape, (dim1, dim2)), region)
