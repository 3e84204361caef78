"""Matrix products: [row block x column block] output tiles reading their full K."""
from __future__ import annotations

import torch
import torch.fx as fx

from ..lower import LoweringContext, node_meta
from ..policy import MEMORY_BOUND_FLOPS_PER_ELEMENT, split_dims, split_range
from ..registry import RULES, float32_only
from ..tile_graph import AtenCall, Box, Region, TensorRef, Tile, TileKind, full_box
from .generic import add_assert_tile, add_value_tile, aten_tiles, broadcast_box, named_schema_args
from .layout import copy_to_new_buffer

aten = torch.ops.aten

# Column blocks narrower than this lose GEMM efficiency for little parallelism.
MIN_COLUMNS_PER_TILE = 64
# Row parts, which idle DSEs take from a preempted one: one thread, oneDNN's packed GEMM
# on 128 rows cut into 16-row calls ran at 86-103 GFLOP/s against 104-108 whole
# (K x N = 768 x 384, 768 x 1536, 3072 x 384); 32-row calls 98-106.
MIN_ROWS_PER_PART = 16
MAX_ROW_PARTS = 8


def _addmm_beats_packed(rows: int, k: int, n: int) -> bool:
    """oneDNN's packed GEMM costs ~10 us a call whatever its size; ATen's addmm (MKL) runs
    one row (a GEMV) faster up to a few million weights, and tiny products of a few rows.
    One thread: 64x64 at 1 row 2.4 vs 12.7 us; 768x768 33 vs 42; 3072x768 120 vs 129; but
    768x50257 9.4 vs 7.1 ms; 256x256 at 3 rows 11 vs 14, at 8 rows 16 vs 17; 768x768 at 2
    rows 60 vs 40. A row-1 tile then also needs no packed copy of its weights."""
    return (rows == 1 and k * n <= 1 << 22) or rows * k * n <= 1 << 18


def _grid(m: int, n: int, tiles: int) -> tuple[int, int]:
    """Row blocks x column blocks for about `tiles` tiles of an [m, n] product: as many as
    wanted (fewer only where blocks would be too narrow), then the fewest elements read per
    tile, its rows of x plus its columns of w along K. A product of few rows is so cut into
    column blocks, each DSE streaming its share of the weights: BERT-base B1's 128-row
    linears as two row blocks made both DSEs read every weight from memory, 126 GFLOP/s per
    DSE against 160 for the same GEMM with its weights in cache (paired in one process,
    2 DSEs: 97.8 -> 88.7 ms per call; B8 602.7 -> 600.2)."""
    max_cols = max(1, n // MIN_COLUMNS_PER_TILE)

    def cost(rows: int) -> tuple[int, int, int, int]:
        cols = min(-(-tiles // rows), max_cols)
        return max(0, tiles - rows * cols), -(-m // rows) + -(-n // cols), rows * cols, -rows

    rows = min(range(1, min(tiles, m) + 1), key=cost)
    return rows, min(-(-tiles // rows), max_cols)


def _lower_matmul(node: fx.Node, ctx: LoweringContext, x, w, bias=None):
    """x [m, k] @ w [k, n] (+ bias), cut by _grid. A frozen w (a linear layer's weight) is prepacked per
    tile shape for oneDNN or MKL (ctx.linear_kernel); a w computed at run time, and a frozen one
    where addmm is faster (_addmm_beats_packed), is read through a view by addmm / mm."""
    xref = ctx.ref(x)
    bref = ctx.expand_to(ctx.ref(bias), (node_meta(node).shape[1],)) if bias is not None else None
    frozen_w = ctx.constant(w)
    wref = ctx.ref(w) if frozen_w is None else None
    out = ctx.new_buffer(node)
    m, n = out.shape
    k = xref.shape[1]
    # A product of few rows is bound by reading w, which every row block reads whole and a
    # column block in part (ResNet-50's classifier at batch 1: 8 MB of weights for 4 MFLOP,
    # ~0.33 ms on one DSE while the other idled at the end of every call).
    work = max(2.0 * m * n * k, MEMORY_BOUND_FLOPS_PER_ELEMENT * k * n)
    tiles = ctx.policy.num_tiles(work, m * max(1, n // MIN_COLUMNS_PER_TILE))
    row_parts, col_parts = _grid(m, n, tiles)
    packed: dict[tuple[int, int, int], Region] = {}
    for r0, r1 in split_range(m, row_parts):
        for c0, c1 in split_range(n, col_parts):
            inputs = [Region(xref, ((r0, r1), (0, k))), None, Region(bref, ((c0, c1),)) if bref is not None else None]
            ints: tuple[int, ...] = ()
            parts = max(1, min(MAX_ROW_PARTS, (r1 - r0) // MIN_ROWS_PER_PART))
            packs_this_tile = frozen_w is not None and not _addmm_beats_packed(r1 - r0, k, c1 - c0)
            if not packs_this_tile or ctx.linear_kernel == "mkl":
                wref = ctx.ref(w) if wref is None else wref
            if not packs_this_tile:
                kind, inputs[1] = TileKind.LINEAR, Region(wref, ((0, k), (c0, c1)))
            else:
                key = (r1 - r0, c0, c1)
                if key not in packed:
                    packed[key] = _packed_weight(ctx, node, frozen_w[:, c0:c1].t(), r1 - r0)
                inputs[1] = packed[key]
                kind = TileKind.PACKED_LINEAR
                if ctx.linear_kernel == "mkl":
                    # Row parts run on the packing where it was shown to serve their rows, else
                    # addmm on the unpacked columns.
                    part_rows = {b - a for a, b in split_range(r1 - r0, parts)} - {r1 - r0}
                    serves = ctx.packs.mkl_packing_serves(packed[key].ref.buffer.constant, part_rows)
                    kind, ints = TileKind.MKL_LINEAR, (r1 - r0, int(serves))
                    inputs.append(Region(wref, ((0, k), (c0, c1))))
            tile = Tile(kind, Region(out, ((r0, r1), (c0, c1))), inputs, ints, [], str(node.target), node.name,
                        row_parts=parts, row_inputs=(0,))
            ctx.add_tile(tile, fusible_for=node)
    return out


def _packed_weight(ctx: LoweringContext, node: fx.Node, columns: torch.Tensor, rows: int) -> Region:
    """`columns` [n_block, k] of a frozen weight, packed for tiles of `rows` rows."""
    if ctx.linear_kernel == "mkl":
        packed = ctx.packs.mkl_linear(columns, rows)
        return Region(TensorRef.of(ctx.constant_buffer(packed, f"{node.name}_weight")), ((0, packed.shape[0]),))
    packed = ctx.packs.linear(columns, rows)
    return Region(TensorRef.of(ctx.constant_buffer(packed, f"{node.name}_weight")), ((0, columns.shape[0]), (0, columns.shape[1])))


def _check_addmm(node: fx.Node, is_frozen):
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
        return "addmm with alpha or beta other than 1"
    if node_meta(node.args[0]).dim() > 1:
        return "addmm with a 2-d bias"
    return float32_only(node)


@RULES.register(aten.addmm.default, check=_check_addmm)
def lower_addmm(node: fx.Node, ctx: LoweringContext):
    bias, x, w = node.args[:3]
    return _lower_matmul(node, ctx, x, w, bias)


@RULES.register(aten.mm.default, check=lambda node, is_frozen: float32_only(node))
def lower_mm(node: fx.Node, ctx: LoweringContext):
    return _lower_matmul(node, ctx, node.args[0], node.args[1])


@RULES.register(aten._cdist_forward.default, check=lambda node, is_frozen: float32_only(node))
def lower_cdist(node: fx.Node, ctx: LoweringContext):
    """Distances [..., P, R] between rows of x1 [..., P, M] and x2 [..., R, M]: tiles cut the
    batch dims and P, each reading its rows of x1 and its batches of x2 whole. (ATen sends
    p = 2 distances with more than 25 rows on either side to matmuls, which other rules tile,
    so a tile with fewer rows computes them as the whole op would.)"""
    shape = tuple(node_meta(node).shape)
    m = node_meta(node.args[0]).shape[-1]
    numel = node_meta(node).numel()
    parts = ctx.policy.num_tiles(3.0 * numel * m, max(1, numel // max(1, shape[-1])))
    boxes = split_dims(shape, tuple(range(len(shape) - 1)), parts)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        return broadcast_box(box[:-2], ref.shape[:-2]) + (box[-2] if i == 0 else (0, ref.shape[-2]), (0, m))

    return aten_tiles(node, ctx, ctx.new_buffer(node, channels_last=False), boxes, region)


@RULES.register(aten._trilinear.default, check=lambda node, is_frozen: float32_only(node))
def lower_trilinear(node: fx.Node, ctx: LoweringContext):
    """nn.Bilinear's product of three tensors: each is unsqueezed at its `expand` dims into
    one shared space, they are multiplied, and the `sumdim` dims summed away. An input's own
    dims are the space's dims it is not expanded at, in order, so a tile over the kept dims
    reads each input at the tile's box there (a dim of size 1 broadcasts) and whole along
    the summed ones."""
    args = named_schema_args(node)
    inputs = [args["i1"], args["i2"], args["i3"]]
    expands = [args["expand1"], args["expand2"], args["expand3"]]
    summed = set(args["sumdim"])
    rank = node_meta(inputs[0]).dim() + len(expands[0])
    kept = [d for d in range(rank) if d not in summed]
    shape = tuple(node_meta(node).shape)
    own_dims = [[d for d in range(rank) if d not in expand] for expand in expands]
    space = [1] * rank  # the shared space's sizes, for the tile cost
    for i, dims in zip(inputs, own_dims):
        for d, size in zip(dims, node_meta(i).shape):
            space[d] = max(space[d], size)
    numel = max(1, node_meta(node).numel())
    parts = ctx.policy.num_tiles(2.0 * torch.Size(space).numel(), numel)
    boxes = split_dims(shape, tuple(range(len(shape))), parts)

    def region(i: int, ref: TensorRef, box: Box) -> Box:
        at = dict(zip(kept, box))
        return tuple((0, size) if size == 1 or d in summed else at[d] for d, size in zip(own_dims[i], ref.shape))

    return aten_tiles(node, ctx, ctx.new_buffer(node, channels_last=False), boxes, region)


# transformers' MoE expert matmul for dtypes its torch.compile path cannot give ATen's grouped mm.
GROUPED_MM_FALLBACK = "transformers.grouped_mm_fallback.default"


def _check_grouped_mm(node: fx.Node, is_frozen):
    x, w, offs = (node_meta(a) for a in node.args[:3])
    if x.dim() != 2 or w.dim() != 3 or offs.dim() != 1 or not 0 < w.shape[0] == offs.shape[0]:
        return "grouped mm of other than [tokens, K] x [experts, K, N] with an offset per expert"
    if x.dtype != torch.float32 or w.dtype != torch.float32:
        return "dtype (this op is tiled for torch.float32)"
    if x.shape[1] % 4 or w.shape[2] % 4:
        return "K or N not a multiple of 4 (ATen's grouped mm needs strides of 16 bytes)"
    return None


def _with_16_byte_strides(ctx: LoweringContext, node: fx.Node, ref: TensorRef, name: str) -> TensorRef:
    """The operand as it is if every stride but a unit one spans a multiple of 16 bytes (ATen's
    grouped mm needs that), else a contiguous copy (K and N are multiples of 4)."""
    meta = ref.meta()
    if all(stride == 1 or size == 1 or stride % 4 == 0 for size, stride in zip(meta.shape, meta.stride())):
        return ref
    return copy_to_new_buffer(ctx, ref, ref.shape, f"{node.name}_{name}", GROUPED_MM_FALLBACK)


@RULES.register(GROUPED_MM_FALLBACK, check=_check_grouped_mm)
def lower_grouped_mm(node: fx.Node, ctx: LoweringContext):
    """MoE experts (Mixtral, Qwen2-MoE): rows [offs[e-1], offs[e]) of x, the tokens sorted by
    expert, times expert e's weight. The offsets are known only at run time, so tiles cut the
    output columns, each reading every row and its columns of every expert's weight, and run
    ATen's grouped mm. Rows past the last offset, which the op leaves zero and ATen leaves
    unwritten, never exist in transformers' use: a check tile fails the request if they do."""
    xref, wref = (_with_16_byte_strides(ctx, node, ctx.ref(a), name) for a, name in zip(node.args, ("x", "w")))
    offs = ctx.ref(node.args[2])
    (rows, k), (experts, _, n) = xref.shape, wref.shape
    out = ctx.new_buffer(node, channels_last=False)
    parts = ctx.policy.num_tiles(2.0 * rows * k * n, max(1, n // MIN_COLUMNS_PER_TILE))
    x, all_offs = Region(xref, full_box(xref.shape)), Region(offs, full_box(offs.shape))
    for c0, c1 in split_range(n // 4, parts):  # blocks of 4 columns keep 16-byte strides
        w = Region(wref, ((0, experts), (0, k), (4 * c0, 4 * c1)))
        call = AtenCall(aten._grouped_mm.default, (x, w, all_offs, None, None))
        ctx.add_tile(Tile(TileKind.ATEN_OP, Region(out, ((0, rows), (4 * c0, 4 * c1))), [x, w, all_offs], (), [],
                          GROUPED_MM_FALLBACK, node.name, call), fusible_for=node)
    last = Region(offs, ((experts - 1, experts),))
    covered = add_value_tile(ctx, node, "offsets_cover_rows", (1,), torch.bool, aten.eq.Scalar, (last, rows))
    add_assert_tile(ctx, node, covered, f"aspen: grouped mm offsets must end at the {rows} rows (every token "
                                        "assigned to an expert)")
    return out
