"""Ops tiled by index math but computed by their own ATen kernel (an aten-op tile).

Elementwise ops of any dtype are cut into boxes of the output, each reading the
broadcast-matching boxes of its inputs; row-wise ops (layer norm, softmax) into
row blocks that span the reduced dimension; bmm into (batch, row block) tiles
reading their batch's whole right-hand side; the few tiny mask ops without a
useful cut run as one tile. Ops that read or write at run-time indices are in
indexing.py.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from ..lower import LoweringContext, Value, buffers_for_outputs, node_meta
from ..policy import MEMORY_BOUND_FLOPS_PER_ELEMENT, split_dims
from ..registry import RULES, float32_only
from ..tile_graph import AtenCall, Box, Buffer, Region, TensorRef, Tile, TileKind, full_box

aten = torch.ops.aten


def schema_args(node: fx.Node) -> list:
    """The node's arguments in schema order, defaults filled in."""
    args = []
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args) and not arg.kwarg_only:
            args.append(node.args[i])
        elif arg.name in node.kwargs:
            args.append(node.kwargs[arg.name])
        else:
            args.append(arg.default_value)
    return args


def named_schema_args(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    return dict(zip((a.name for a in node.target._schema.arguments), schema_args(node)))


def broadcast_box(box: Box, shape: Sequence[int]) -> Box:
    """The box of an input of `shape` that broadcasting maps onto output `box`."""
    offset = len(box) - len(shape)
    return tuple((0, 1) if size == 1 else box[offset + d] for d, size in enumerate(shape))


def aten_tiles(node: fx.Node, ctx: LoweringContext, out: TensorRef, boxes: Sequence[Box],
               arg_region: Callable[[int, TensorRef, Box], Box], result_index: int = 0,
               operands: Optional[dict[int, TensorRef]] = None,
               sizes_of: Optional[Callable[[Box], dict[int, Any]]] = None) -> TensorRef:
    """One aten-op tile per output box; arg_region(i, ref, box) gives the box of tensor
    argument i (schema position) that the tile reads, also of each tensor in a list
    argument (index_put's indices). `operands` replaces the refs of some arguments (e.g.
    by a copy in a layout the kernel can read); `sizes_of(box)` the non-tensor arguments
    that describe the tile's own size (group norm's batch count)."""
    args = schema_args(node)
    refs = {i: ctx.ref(a) for i, a in enumerate(args) if isinstance(a, fx.Node)}
    refs.update(operands or {})
    for box in boxes:
        call_args: list[Any] = list(args)
        for i, size in (sizes_of(box) if sizes_of else {}).items():
            call_args[i] = size
        inputs = []
        for i, ref in refs.items():
            region = Region(ref, arg_region(i, ref, box))
            call_args[i] = region
            inputs.append(region)
        for i, a in enumerate(args):  # lists of tensors (index.Tensor's indices)
            if isinstance(a, (list, tuple)) and any(isinstance(x, fx.Node) for x in a):
                call_args[i] = [Region(ctx.ref(x), arg_region(i, ctx.ref(x), box)) if isinstance(x, fx.Node) else x
                                for x in a]
                inputs += [r for r in call_args[i] if isinstance(r, Region)]
        tile = Tile(TileKind.ATEN_OP, Region(out, box), inputs, (), [], str(node.target), node.name,
                    AtenCall(node.target, tuple(call_args), result_index))
        ctx.add_tile(tile, fusible_for=node)
    return out


def aten_tiles_for_outputs(node: fx.Node, ctx: LoweringContext, boxes_of: Callable[[TensorRef], Sequence[Box]],
                           arg_region: Callable[[int, TensorRef, Box], Box]) -> Value:
    """A dense buffer and aten-op tiles per output of the node; an op returning several
    tensors (values and indices) gets a set of tiles per output, each keeping its result."""
    outs = [aten_tiles(node, ctx, out, boxes_of(out), arg_region, result_index=i)
            for i, out in enumerate(buffers_for_outputs(node, channels_last=False))]
    return tuple(outs) if isinstance(node.meta["val"], (tuple, list)) else outs[0]


def wrap_dim(dim: int, rank: int) -> int:
    """`dim` wrapped as ATen wraps it: a 0-d tensor takes dim 0 or -1 as if it had one dim."""
    return dim % max(1, rank)


def reduced_dims(dims: Sequence[int], rank: int) -> list[int]:
    """A reduction's dims wrapped and sorted; none for a 0-d tensor (whose dim 0 or -1
    names no dim to reduce)."""
    return sorted(wrap_dim(d, rank) for d in dims) if rank else []


def _parts(ctx: LoweringContext, node: fx.Node, cost: float, max_parts: int) -> int:
    return ctx.policy.num_tiles(cost, max(1, max_parts))


def elementwise_boxes(node: fx.Node, ctx: LoweringContext) -> list[Box]:
    """Boxes of the node's output cut along any dims, as many as its memory traffic is worth."""
    shape = tuple(node_meta(node).shape)
    numel = max(1, node_meta(node).numel())
    return split_dims(shape, tuple(range(len(shape))), _parts(ctx, node, numel * MEMORY_BOUND_FLOPS_PER_ELEMENT, numel))


def lower_elementwise(node: fx.Node, ctx: LoweringContext) -> Value:
    """Tiles over any dims; an op with several outputs of one shape (frexp's mantissa and
    exponent) gets a set of tiles per output."""
    boxes = elementwise_boxes(node, ctx)
    return aten_tiles_for_outputs(node, ctx, lambda out: boxes, lambda i, ref, box: broadcast_box(box, ref.shape))


@RULES.register_tag(torch.Tag.pointwise)
def lower_pointwise_family(node: fx.Node, ctx: LoweringContext):
    return lower_elementwise(node, ctx)


@RULES.register(aten.where.self, aten._to_copy.default)
def lower_where_or_convert(node, ctx):
    return lower_elementwise(node, ctx)


def row_blocks(node: fx.Node, ctx: LoweringContext, shape: Sequence[int], reduced: Sequence[int]) -> list[Box]:
    """Boxes of `shape` cut along every dim but `reduced`, each spanning the reduced dims."""
    kept = tuple(d for d in range(len(shape)) if d not in reduced)
    rows = max(1, int(torch.Size([shape[d] for d in kept]).numel()))
    return split_dims(shape, kept, _parts(ctx, node, node_meta(node).numel() * MEMORY_BOUND_FLOPS_PER_ELEMENT, rows))


def lower_rowwise(node: fx.Node, ctx: LoweringContext, reduced: Sequence[int], tensor_args: dict[int, str],
                  result_index: int = 0, out_shape=None) -> TensorRef:
    """Tiles over every dim but `reduced`; argument i is 'rows' (read at the tile's rows)
    or 'all' (read whole, e.g. a weight)."""
    out = ctx.new_buffer(node, out_shape, channels_last=False)
    boxes = row_blocks(node, ctx, out.shape, reduced)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        return box[:len(ref.shape)] if tensor_args.get(i) == "rows" else full_box(ref.shape)

    return aten_tiles(node, ctx, out, boxes, region, result_index)


def check_normalized_output_only(node, is_frozen):
    """Layer and group norm also return the mean and rstd, which aspen does not produce."""
    if any(u.args[1] != 0 for u in node.users):
        return "uses the mean or rstd outputs"
    return float32_only(node)


@RULES.register(aten.native_layer_norm.default, check=check_normalized_output_only)
def lower_layer_norm(node, ctx):
    shape = node_meta(node).shape
    reduced = range(len(shape) - len(node.args[1]), len(shape))
    out = lower_rowwise(node, ctx, tuple(reduced), {0: "rows", 2: "all", 3: "all"}, 0, shape)
    return (out, None, None)


def _check_softmax(node, is_frozen):
    return "half_to_float" if node.args[2] else float32_only(node)


@RULES.register(aten._softmax.default, aten._log_softmax.default, check=_check_softmax)
def lower_softmax(node, ctx):
    dim = wrap_dim(node.args[1], node_meta(node).dim())
    return lower_rowwise(node, ctx, (dim,), {0: "rows"})


def _check_safe_softmax(node, is_frozen):
    dtype = node.args[2] if len(node.args) > 2 else node.kwargs.get("dtype")
    return "dtype=" if dtype is not None else float32_only(node)


@RULES.register(aten._safe_softmax.default, check=_check_safe_softmax)
def lower_safe_softmax(node, ctx):
    """One pass instead of its five-op decomposition (see csrc/kernels_softmax.cpp), whose
    kernel takes rows; a 0-d tensor has none and runs ATen's."""
    xref = ctx.ref(node.args[0])
    if not xref.shape:
        return lower_rowwise(node, ctx, (), {0: "rows"})
    dim = wrap_dim(node.args[1], len(xref.shape))
    out = ctx.new_buffer(node, channels_last=False)
    for box in row_blocks(node, ctx, out.shape, (dim,)):
        tile = Tile(TileKind.SAFE_SOFTMAX, Region(out, box), [Region(xref, box)], (dim,), [], str(node.target),
                    node.name)
        ctx.add_tile(tile, fusible_for=node)
    return out


def lower_whole_along(node: fx.Node, ctx: LoweringContext, whole: Sequence[int]) -> Value:
    """Tiles over every output dim but `whole`. The first argument (whose dims are the
    output's last ones) is read at the tile's box, in full along `whole`; any other tensor
    argument (an index) is read whole. Adaptive max pooling's values and indices each get
    their own tiles."""
    rank = node_meta(node).dim()

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        if i != 0:
            return full_box(ref.shape)
        offset = rank - len(ref.shape)
        return tuple((0, size) if d + offset in whole else box[d + offset] for d, size in enumerate(ref.shape))

    return aten_tiles_for_outputs(node, ctx, lambda out: row_blocks(node, ctx, out.shape, tuple(whole)), region)


@RULES.register(aten.flip.default)
def lower_flip(node, ctx):
    rank = node_meta(node).dim()
    return lower_whole_along(node, ctx, tuple(wrap_dim(d, rank) for d in named_schema_args(node)["dims"]))


@RULES.register(aten.repeat.default)
def lower_repeat(node, ctx):
    """New leading dims and repeated dims are whole; the others are cut."""
    repeats = list(named_schema_args(node)["repeats"])
    offset = len(repeats) - node_meta(node.args[0]).dim()
    return lower_whole_along(node, ctx, tuple(d for d, r in enumerate(repeats) if d < offset or r != 1))


@RULES.register(aten.cumsum.default, aten.cumprod.default, aten.logcumsumexp.default)
def lower_scan(node, ctx):
    dim = wrap_dim(node.args[1], node_meta(node).dim())
    return lower_rowwise(node, ctx, (dim,), {0: "rows"})


@RULES.register(aten.bmm.default, check=lambda node, is_frozen: float32_only(node))
def lower_bmm(node, ctx):
    out = ctx.new_buffer(node, channels_last=False)
    b, n, m = out.shape
    k = node_meta(node.args[0]).shape[2]
    flops = 2.0 * b * n * m * k
    boxes = split_dims(out.shape, (0, 1), ctx.policy.num_tiles(flops, b * n))

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        # Left operand: the tile's rows of its batches; right operand: its batches whole.
        return (box[0], box[1], (0, k)) if i == 0 else (box[0], (0, k), (0, m))

    return aten_tiles(node, ctx, out, boxes, region)


@RULES.register(aten.sum.dim_IntList, aten.amax.default, aten.amin.default, aten.argmax.default, aten.argmin.default,
                aten.any.dim, aten.any.dims, aten.all.dim, aten.linalg_vector_norm.default, aten.var.correction,
                aten.std.correction, aten.logsumexp.default, aten.prod.dim_int, aten.max.default, aten.min.default,
                aten.max.dim, aten.min.dim, aten.median.default, aten.median.dim, aten.nanmedian.default,
                aten.nanmedian.dim, aten.kthvalue.default, aten.mode.default, aten.var_mean.correction,
                aten.std_mean.correction, aten.any.default, aten.all.default, aten.all.dims, aten.sum.default,
                aten.prod.default, aten.nansum.default, aten.count_nonzero.default, aten.count_nonzero.dim_IntList,
                aten.trace.default)
def lower_reduction(node, ctx):
    """Tiles over the kept dims; each tile reads its slice of the input whole along the
    reduced dims (the schema's `dim`; none or an empty list is every dim). Ops returning
    values and indices (max/min/median/kthvalue/mode along a dim), or two statistics
    (var_mean), compute each by a set of tiles."""
    x = ctx.ref(node.args[0])
    rank = len(x.shape)
    args = named_schema_args(node)
    dims = args.get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or range(rank))
    dims = reduced_dims(dims, rank)
    keepdim = bool(args.get("keepdim", False))
    kept = [d for d in range(rank) if d not in dims]
    out_kept = tuple(kept) if keepdim else tuple(range(len(kept)))
    rows = max(1, node_meta(node).numel())
    parts = _parts(ctx, node, node_meta(node.args[0]).numel() * MEMORY_BOUND_FLOPS_PER_ELEMENT, rows)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        kept_ranges = iter(box[d] for d in out_kept)
        return tuple((0, ref.shape[d]) if d in dims else next(kept_ranges) for d in range(rank))

    return aten_tiles_for_outputs(node, ctx, lambda out: split_dims(out.shape, out_kept, parts), region)


@RULES.register(aten.topk.default, aten.sort.default, aten.sort.stable, aten.cummax.default, aten.cummin.default)
def lower_sorting(node, ctx):
    """Sorting and running max/min: row blocks spanning the dim; the values and the indices
    each by their own tiles. Any dtype: the op's own kernel runs."""
    return lower_whole_along(node, ctx, (wrap_dim(named_schema_args(node)["dim"], node_meta(node.args[0]).dim()),))


@RULES.register(aten.index.Tensor, aten.full_like.default, aten.histc.default, aten.masked_scatter.default)
def lower_whole(node, ctx):
    """Mask plumbing, histograms (MoE routing counts) and masked_scatter (image features
    into a multimodal model's token embeddings: each masked position takes the next source
    element, a count over the whole mask before it): one tile reading its inputs whole."""
    out = ctx.new_buffer(node, channels_last=False)
    return aten_tiles(node, ctx, out, [full_box(out.shape)], lambda i, ref, box: full_box(ref.shape))


def add_value_tile(ctx: LoweringContext, node: fx.Node, name: str, shape: Sequence[int], dtype: torch.dtype,
                   op: torch._ops.OpOverload, args: Sequence[Any], label: Optional[str] = None) -> TensorRef:
    """One aten-op tile computing a small value of the node's own (a condition a check asserts)
    into a buffer of its own, `{node}_{name}`."""
    out = TensorRef.of(Buffer(f"{node.name}_{name}", tuple(shape), dtype))
    ctx.add_tile(Tile(TileKind.ATEN_OP, Region(out, full_box(out.shape)), [a for a in args if isinstance(a, Region)],
                      (), [], label or str(op), node.name, AtenCall(op, tuple(args))))
    return out


def add_assert_tile(ctx: LoweringContext, node: fx.Node, cond: TensorRef, message: str,
                    label: Optional[str] = None) -> None:
    """A tile that raises `message` if the one-element `cond` is zero, failing the request as
    eager fails the call. It runs ATen's functional assert, whose result (a copy of the
    condition) nobody reads."""
    region = Region(cond, full_box(cond.shape))
    add_value_tile(ctx, node, "checked", cond.shape, cond.buffer.dtype, aten._functional_assert_async.msg,
                   (region, message, region), label)


@RULES.register(aten._assert_async.msg)
def lower_runtime_check(node, ctx):
    """A check of values (F.one_hot's range of class ids)."""
    add_assert_tile(ctx, node, ctx.ref(node.args[0]), node.args[1], str(node.target))
    return None
