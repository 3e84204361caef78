"""Ops that read or write at indices known only at run time: embedding (bags), gather and
scatter along a dim, index_select, index_put, bucketize / searchsorted, grid sampling.
(index.Tensor, tiny mask plumbing here, is one tile by generic.py's lower_whole.)

Where an output element's coordinates off the indexed dim are those of the index
elements it reads (gather, scatter, embedding rows), tiles cut those dims and read the
indexed dim whole, so ATen's kernel on a tile's views computes exactly its box. An index
that can send any input element anywhere (index_put with integer indices, a bag's
offsets) runs as one tile.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..lower import node_meta
from ..policy import MEMORY_BOUND_FLOPS_PER_ELEMENT, split_dims
from ..registry import RULES, float32_only
from ..tile_graph import AtenCall, Box, Region, TensorRef, Tile, TileKind, full_box
from .generic import (
    add_assert_tile,
    add_value_tile,
    aten_tiles,
    elementwise_boxes,
    lower_rowwise,
    lower_whole,
    lower_whole_along,
    named_schema_args,
    row_blocks,
    schema_args,
    wrap_dim,
)

aten = torch.ops.aten


def _check_embedding(node, is_frozen):
    return "sparse embedding" if len(node.args) > 4 and node.args[4] else None


@RULES.register(aten.embedding.default, check=_check_embedding)
def lower_embedding(node, ctx):
    # out[..., :] = weight[indices[...]]: rows of the output follow rows of the indices.
    return lower_rowwise(node, ctx, (node_meta(node).dim() - 1,), {0: "all", 1: "rows"})


# Outputs of _embedding_bag past the first (offset2bag, bag sizes, max indices) serve its backward.
EMBEDDING_BAG = (aten._embedding_bag.default, aten._embedding_bag_forward_only.default)


def _check_embedding_bag(node, is_frozen):
    if any(u.args[1] != 0 for u in node.users):
        return "uses offset2bag, bag sizes or max indices"
    return "sparse embedding" if named_schema_args(node)["sparse"] else None


def _bag_bounds(offsets: torch.Tensor, num_indices: int, include_last_offset: bool) -> list[int]:
    """Where each bag's indices start, then where the last one ends. ATen checks offsets
    only on its multithreaded path, and a tile runs on one thread: bad ones would give
    silent zeros, so they are refused here."""
    bounds = offsets.tolist() + ([] if include_last_offset else [num_indices]) if offsets.dim() == 1 else []
    if not bounds or bounds[0] != 0 or bounds[-1] > num_indices or any(a > b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"aspen: EmbeddingBag offsets must be 1-d, start at 0, never decrease and stay within the "
                         f"{num_indices} indices; got {offsets.tolist()}")
    return bounds


def _check_offsets_never_decrease(node: fx.Node, ctx, offsets: TensorRef) -> None:
    """Run-time offsets: ATen checks their first and last value on every path, but that they
    never decrease only when it runs multithreaded (a tile's one thread would sum nothing and
    answer). Tiles check it: offsets[1:] >= offsets[:-1], all of it, and an assertion."""
    count = offsets.shape[0] if len(offsets.shape) == 1 else 0
    if count < 2:
        return
    later, earlier = Region(offsets, ((1, count),)), Region(offsets, ((0, count - 1),))
    steps = add_value_tile(ctx, node, "offset_steps", (count - 1,), torch.bool, aten.ge.Tensor, (later, earlier))
    ordered = add_value_tile(ctx, node, "offsets_ordered", (), torch.bool, aten.all.default,
                             (Region(steps, full_box(steps.shape)),))
    add_assert_tile(ctx, node, ordered, "aspen: EmbeddingBag offsets must never decrease (each bag starts where the "
                                        "one before it ends or later)")


@RULES.register(*EMBEDDING_BAG, check=_check_embedding_bag)
def lower_embedding_bag(node, ctx):
    """nn.EmbeddingBag. With offsets known at compile time (a 2-d input's fixed-size bags),
    tiles cut the bags, each reading its bags' indices (and per-sample weights) with its
    own offsets counted from its first index; run-time offsets make one tile, beside the
    tiles checking their order."""
    args = named_schema_args(node)
    offsets, num_indices = ctx.constant(args["offsets"]), node_meta(args["indices"]).numel()
    if offsets is None:
        _check_offsets_never_decrease(node, ctx, ctx.ref(args["offsets"]))
        return (lower_whole(node, ctx), None, None, None)
    bounds = _bag_bounds(offsets, num_indices, args["include_last_offset"])
    out = ctx.new_buffer(node, channels_last=False)
    parts = ctx.policy.num_tiles(num_indices * out.shape[1] * MEMORY_BOUND_FLOPS_PER_ELEMENT, out.shape[0])
    extra = int(args["include_last_offset"])  # the offsets then also hold the last bag's end
    weight, indices = ctx.ref(args["weight"]), ctx.ref(args["indices"])
    sample_weights = ctx.ref(args["per_sample_weights"]) if isinstance(args["per_sample_weights"], fx.Node) else None
    scalar_args = schema_args(node)[3:]
    for box in split_dims(out.shape, (0,), parts):
        (first, stop), _ = box
        span = ((bounds[first], bounds[stop]),)
        tile_offsets = ctx.constant_buffer(offsets[first:stop + extra] - bounds[first], f"{node.name}_offsets")
        call_args = [Region(weight, full_box(weight.shape)), Region(indices, span),
                     Region(TensorRef.of(tile_offsets), full_box(tile_offsets.shape))] + scalar_args
        if sample_weights is not None:
            call_args[6] = Region(sample_weights, span)
        inputs = [a for a in call_args if isinstance(a, Region)]
        ctx.add_tile(Tile(TileKind.ATEN_OP, Region(out, box), inputs, (), [], str(node.target), node.name,
                          AtenCall(node.target, tuple(call_args))), fusible_for=node)
    return (out, None, None, None)


@RULES.register(aten.index_select.default)
def lower_index_select(node, ctx):
    return lower_whole_along(node, ctx, (wrap_dim(named_schema_args(node)["dim"], node_meta(node).dim()),))


@RULES.register(aten.gather.default, check=lambda node, is_frozen: "sparse_grad" if schema_args(node)[3] else None)
def lower_gather(node, ctx):
    """out[..., i, ...] = self[..., index[..., i, ...], ...] along dim: a tile reads its
    rows of the index and its rows of self whole along dim (self may be larger there)."""
    dim = wrap_dim(node.args[1], node_meta(node).dim())
    out = ctx.new_buffer(node, channels_last=False)
    boxes = row_blocks(node, ctx, out.shape, (dim,))

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        return tuple((0, ref.shape[d]) if i == 0 and d == dim else box[d] for d in range(len(ref.shape)))

    return aten_tiles(node, ctx, out, boxes, region)


SCATTER = (aten.scatter.src, aten.scatter.value, aten.scatter.reduce, aten.scatter.value_reduce,
           aten.scatter_add.default, aten.scatter_reduce.two)


@RULES.register(*SCATTER)
def lower_scatter(node, ctx):
    """out = self with src (or a value) written, added or reduced at `index` along dim.
    Element (.., j, ..) of out receives only from index elements with its coordinates off
    dim, so tiles cut every other dim: each reads its box of self, and its box of the index
    and src clipped to the index's extent (empty past it: those rows keep self's values)."""
    args = named_schema_args(node)
    shape = tuple(node_meta(node).shape)
    index_shape = tuple(node_meta(args["index"]).shape)
    dim = wrap_dim(args["dim"], len(shape))
    out = ctx.new_buffer(node, channels_last=False)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        if i == 0:
            return box
        return tuple((0, extent) if d == dim else (min(start, extent), min(stop, extent))
                     for d, ((start, stop), extent) in enumerate(zip(box, index_shape)))

    return aten_tiles(node, ctx, out, row_blocks(node, ctx, shape, (dim,)), region)


def _is_mask_with_one_value(node: fx.Node) -> bool:
    """index_put(self, [mask], value): `self[mask] = v` with a boolean mask over self's leading dims."""
    args = named_schema_args(node)
    indices, values = args["indices"], args["values"]
    return len(indices) == 1 and isinstance(indices[0], fx.Node) and node_meta(indices[0]).dtype == torch.bool \
        and node_meta(values).numel() == 1


@RULES.register(aten.index_put.default, aten._unsafe_index_put.default)
def lower_index_put(node, ctx):
    """self[indices] = values (+= with accumulate). A boolean mask with one value
    (`y[y < 0] = 0`) is elementwise: tiles cut every dim, each masking its box. Integer
    indices may send any value anywhere: one tile reading everything."""
    if not _is_mask_with_one_value(node):
        return lower_whole(node, ctx)
    out = ctx.new_buffer(node, channels_last=False)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        # self (0) and the mask (1) at the box; the one value (2) whole.
        return box[:len(ref.shape)] if i in (0, 1) else full_box(ref.shape)

    return aten_tiles(node, ctx, out, elementwise_boxes(node, ctx), region)


@RULES.register(aten.bucketize.Tensor)
def lower_bucketize(node, ctx):
    """Elementwise over the values; every tile reads all the boundaries."""
    out = ctx.new_buffer(node, channels_last=False)
    return aten_tiles(node, ctx, out, elementwise_boxes(node, ctx),
                      lambda i, ref, box: box if i == 0 else full_box(ref.shape))


@RULES.register(aten.searchsorted.Tensor)
def lower_searchsorted(node, ctx):
    """Elementwise over the values (argument 1). A 1-d sorted sequence (and its sorter) is
    read whole; an n-d one holds a sequence per leading index, read at the tile's leading box."""
    out = ctx.new_buffer(node, channels_last=False)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        if i == 1:
            return box
        return full_box(ref.shape) if len(ref.shape) == 1 else box[:-1] + ((0, ref.shape[-1]),)

    return aten_tiles(node, ctx, out, elementwise_boxes(node, ctx), region)


@RULES.register(aten.grid_sampler_2d.default, check=lambda node, is_frozen: float32_only(node))
def lower_grid_sample(node, ctx):
    """out[n, c, h, w] samples input[n, c] (whole: the grid may point anywhere) at grid[n, h, w]:
    tiles cut images, channels and output rows."""
    out = ctx.new_buffer(node, channels_last=False)
    boxes = row_blocks(node, ctx, out.shape, (3,))

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        n, c, h, _ = box
        return (n, c, (0, ref.shape[2]), (0, ref.shape[3])) if i == 0 else (n, h, (0, ref.shape[2]), (0, 2))

    return aten_tiles(node, ctx, out, boxes, region)
