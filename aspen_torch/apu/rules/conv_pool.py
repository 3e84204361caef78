"""Convolution and pooling: batch chunks, output row bands whose input rows follow from the
receptive field, or (convolutions whose weights outweigh an image) output-channel blocks."""
from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import torch.fx as fx

from ..lower import LoweringContext, node_meta
from ..policy import MEMORY_BOUND_FLOPS_PER_ELEMENT, split_dims, split_range
from ..prepack import pack_mkl_weight
from ..registry import RULES, float32_only
from ..tile_graph import Region, TensorRef, Tile, TileKind
from ..window import Window, output_bands, pair
from .generic import aten_tiles, lower_whole_along, named_schema_args, reduced_dims
from .norm import absorb_batch_norm

aten = torch.ops.aten


def _band_rows(rows: Window, out_start: int, out_stop: int, size: int) -> tuple[int, int, int, int, int, int]:
    """Input rows [start, stop) of an output band, its padding rows above and below, and the
    rows and symmetric padding its kernel sees: the kernel passes equal pads as the op's
    padding and materialises unequal ones (a copy of the band)."""
    start, stop, top, bottom = rows.input_rows(out_start, out_stop, size)
    if top > bottom and rows.output_rows(stop - start, top) == out_stop - out_start:
        # No window reaches below the real rows (a stride-2 3x3 over an even height): the
        # kernel may as well pad `top` rows below too, and takes the rows in place.
        bottom = top
    seen = (stop - start, top) if top == bottom else (stop - start + top + bottom, 0)
    return start, stop, top, bottom, *seen


def _window_tiles(node: fx.Node, ctx: LoweringContext, kind: TileKind, x, out_shape, kernel, stride, padding,
                  dilation, flops: float, split_rows: bool, extra_inputs_of, ints_of, images_per_tile: int = 1):
    """Shared tiling of 2-d window ops.

    extra_inputs_of(batch, rows, pad_h) gives a tile's inputs after the input
    region, for the input shape its kernel will see; ints_of(pad_top, pad_bottom)
    gives its int args.
    """
    xref = ctx.ref(x)
    n, c, h, w = xref.shape
    out = ctx.new_buffer(node, out_shape)
    _, oc, oh, ow = out.shape
    rows = Window(kernel[0], stride[0], padding[0], dilation[0])
    tiles = ctx.policy.num_tiles(flops, n * oh, batch=n, images_per_tile=images_per_tile)
    bands = output_bands(n, oh, tiles, split_rows)
    for n0, n1, o0, o1 in bands:
        i0, i1, top, bottom, seen_rows, seen_pad = _band_rows(rows, o0, o1, h)
        in_box = ((n0, n1), (0, c), (i0, i1), (0, w))
        out_box = ((n0, n1), (0, oc), (o0, o1), (0, ow))
        tile = Tile(kind, Region(out, out_box), [Region(xref, in_box), *extra_inputs_of(n1 - n0, seen_rows, seen_pad)],
                    ints_of(top, bottom), [], str(node.target), node.name)
        ctx.add_tile(tile, fusible_for=node)
    return out


def _check_conv(node: fx.Node, is_frozen):
    x, w, b = node.args[0], node.args[1], node.args[2]
    if not is_frozen(w) or (b is not None and not is_frozen(b)):
        return "convolution weight or bias is not a frozen parameter (aspen prepacks weights)"
    if float32_only(node):
        return float32_only(node)
    if node_meta(x).dim() not in (3, 4, 5):
        return f"{node_meta(x).dim() - 2}-d convolution (aspen tiles 1-d to 3-d)"
    return None


# Output-channel blocks are multiples of oneDNN's AVX-512 vector of floats, so every
# block's weights pack alike and no block ends in a partial vector.
_CHANNEL_BLOCK = 16


def _output_channel_blocks(ctx: LoweringContext, flops: float, n: int, in_elements: int, weight: torch.Tensor,
                           groups: int) -> Optional[list[tuple[int, int]]]:
    """Output-channel ranges for tiles that convolve whole images with a block of the
    weights, or None for row bands. A row band re-reads every weight and a channel block
    re-reads the whole image, so blocks win where the weights outweigh an image. Measured
    on one thread, two tiles against the whole conv (ResNet-50 B1): layer-4 3x3 row bands
    1.39x, channel blocks 0.97x; layer-3 3x3 1.14x vs 1.02x; layer-2 3x3 1.07x vs 1.02x.
    Blocks also cut an image into more tiles than it has output rows (ResNet-50's 7)."""
    oc = weight.shape[0]
    if groups != 1 or oc % _CHANNEL_BLOCK or weight.numel() <= in_elements:
        return None
    tiles = ctx.policy.num_tiles(flops, n * (oc // _CHANNEL_BLOCK), batch=n)
    if tiles <= n:
        return None
    per_image = -(-tiles // n)
    blocks = split_range(oc // _CHANNEL_BLOCK, per_image)
    return [(b0 * _CHANNEL_BLOCK, b1 * _CHANNEL_BLOCK) for b0, b1 in blocks]


def _elements_read_per_image(channels: int, size: tuple[int, int], out_size: tuple[int, int],
                             kernel: tuple[int, int]) -> int:
    """Input elements of one image a convolution reads: all of them, but a kernel smaller
    than its stride (a stride-2 1x1 downsample) reads only the rows and columns it lands on."""
    return channels * min(size[0], out_size[0] * kernel[0]) * min(size[1], out_size[1] * kernel[1])


def _images_per_tile(ctx: LoweringContext, n: int, weight_elements: int, image_elements: int) -> int:
    """Images a convolution's batch tiles take: enough that the weights, which each tile
    reads whole, weigh no more than the input it reads of its images, but no fewer tiles
    than the DSEs need. One image a tile keeps a DSE's chunk in its caches through several
    ops (layers 1-2 of ResNet-50, light weights, large images); a late layer re-reading 1-9 MB of
    weights per 7x7 or 14x14 image spends its time streaming weights. Paired in one process
    on the Intel host of the eighteenth session, 2 DSEs: ResNet-50 B8 247 -> 231 ms, B32
    977 -> 915 ms (per-round 1.07, 1.06; inductor+freezing 223 and 963 in the same runs);
    chunks of 4 images for every conv did less (the light convs' zero-filled outputs then
    outgrow the L2), and output-channel blocks of chunks, so that each DSE reads part of the
    weights, did worse (their scratch and its copy). A stride-2 1x1 downsample reads a
    quarter of its input: counting only that (layer 3's 512 -> 1024 in chunks of 6 images,
    was 2; layer 4's in 16, was 11) made ResNet-50 B32 1.5-1.7% faster (paired, twenty-second
    session); one thread, cold input, that downsample takes 2.06 / 1.78 / 1.65 ms an image
    in chunks of 2 / 4 / 8."""
    most = max(1, n // ctx.policy.wanted_tiles)
    return min(most, max(1, -(-weight_elements // image_elements)))


def _pixel_ranges(ctx: LoweringContext, flops: float, n: int, kernel, stride, padding, groups: int,
                  pixels: int, elements: tuple[int, int, int]) -> Optional[list[tuple[int, int]]]:
    """Pixel ranges of each image for a 1x1, stride-1 convolution cut within images: on
    channels-last activations it is a GEMM over pixels, so a range of pixels is a dense
    block of input and output rows with no halo, all of one width (_equal_range_count), and
    the output is written in place. Measured on one thread, two tiles with the shortcut add
    against the whole conv (ResNet-50 B1 shapes): layer-3 256->1024 row halves 0.98x, channel
    blocks 1.24x (their dense scratch and its copy); layer-4 512->2048 (4 + 3 rows) 1.11x vs
    1.29x; 1024->256 1.09x vs 1.15x. Stride-2 1x1 convs read strided pixels: not here.
    But every range reads all the weights: where they outweigh the image read plus twice
    the image written (a block's scratch and its copy), output-channel blocks, which read
    their share of the weights, move fewer bytes (ResNet-50 B1's layer 4, 4 MB of weights
    for a 7x7 image; on 2 DSEs the whole call 0.4-0.9% faster, paired).
    None for other convolutions, when the batch alone gives the tiles, or when no cut into
    ranges of one width comes near the tiles wanted."""
    if not _is_pointwise(kernel, stride, padding, groups):
        return None
    weight_elements, in_elements, out_elements = elements  # of the weights, an input and an output image
    if weight_elements > in_elements + 2 * out_elements:
        return None
    tiles = ctx.policy.num_tiles(flops, n * pixels, batch=n)
    if tiles <= n:
        return None
    ranges = _equal_range_count(pixels, -(-tiles // n))
    return split_range(pixels, ranges) if ranges is not None else None


def _runs_as_mkl_gemm(ctx: LoweringContext, kernel, stride, padding, groups: int, weight_elements: int,
                      image_elements: int) -> bool:
    """Whether a convolution's tiles run MKL's packed GEMM over their channels-last pixels
    instead of oneDNN's convolution: a 1x1, stride-1 convolution (a GEMM [pixels, in] x
    [in, out]) whose weights outweigh an input image, on a CPU where MKL runs the linears
    (ctx.linear_kernel). One thread, ResNet-50's 1x1 shapes with bias, relu and residual
    add, on the Intel AVX-512 host of the thirtieth session: with the weights coming from
    L3 as at batch 1, layers 3-4 1.17-1.34x faster than oneDNN, layers 1-2 0.83-1.09x; with
    them hot as in B32's chunks of images, layer 4 1.10-1.24x, layer 3 0.99-1.05x, layer 1
    0.82x. Layers 3 and 4 are those whose weights outweigh the image. (The kernel choice is
    asked last: under 'auto' it is measured, once, by the first graph that needs it.)"""
    return (_is_pointwise(kernel, stride, padding, groups) and weight_elements >= image_elements
            and ctx.linear_kernel == "mkl")


def _is_pointwise(kernel, stride, padding, groups: int) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped convolution: on channels-last activations, a GEMM
    [pixels, in channels] x [in, out channels]."""
    return (tuple(kernel), tuple(stride), tuple(padding), groups) == ((1, 1), (1, 1), (0, 0), 1)


def _equal_range_count(pixels: int, wanted: int) -> Optional[int]:
    """How many ranges of equal width to cut `pixels` into: the divisor nearest `wanted`,
    within a factor of 2, or None. All ranges share one packing made for their width, and
    oneDNN blocks a 1x1 conv's weights by the pixel count on some CPUs (AVX2: 24 pixels want
    Acdb24a, 25 Acdb32a), so a range of another width would reorder the weights every call."""
    counts = [d for d in range(2, min(pixels, 2 * wanted) + 1) if pixels % d == 0 and 2 * d >= wanted]
    return min(counts, key=lambda d: max(d / wanted, wanted / d), default=None)


def _lower_convolution_of_whole_images(node: fx.Node, ctx: LoweringContext) -> TensorRef:
    """Transposed convolutions (decoder upsampling: U-Net, GAN generators, vocoders) and 3-d
    convolutions (video, volumes): ATen's own kernel over whole images, cut by batch, then
    into output-channel blocks (the weight read at the block's out-channel slice: dim 1 of
    a transposed weight [in, out / groups, *kernel], dim 0 of [out, in / groups, *kernel]).
    A transposed conv's output row depends on input rows the stride interleaves, so rows
    are not cut; 3-d convs are not banded either (their weights are not prepacked)."""
    x, w, transposed, groups = node.args[0], node.args[1], node.args[6], node.args[8]
    in_shape, out_shape = tuple(node_meta(x).shape), tuple(node_meta(node).shape)
    n, oc = in_shape[0], out_shape[1]
    # Each output (or, transposed, input) element meets one weight slice [in or out / groups, *kernel].
    flops = 2.0 * math.prod(in_shape if transposed else out_shape) * math.prod(node_meta(w).shape[1:])
    weight_out_dim = 1 if transposed else 0
    out = ctx.new_buffer(node)
    blocks = max(1, oc // _CHANNEL_BLOCK) if groups == 1 else 1
    tiles = ctx.policy.num_tiles(flops, n * blocks, batch=n)
    spatial = tuple((0, s) for s in out_shape[2:])
    if tiles <= n:
        boxes = [((n0, n1), (0, oc), *spatial) for n0, n1 in split_range(n, tiles)]
    else:
        channel_ranges = split_range(oc, min(blocks, -(-tiles // n)))
        boxes = [((i, i + 1), cs, *spatial) for i in range(n) for cs in channel_ranges]

    def region(i: int, ref: TensorRef, box) -> tuple:
        if i == 0:
            return (box[0], *((0, s) for s in ref.shape[1:]))
        if i == 1:
            return tuple(box[1] if d == weight_out_dim else (0, s) for d, s in enumerate(ref.shape))
        return (box[1],)

    return aten_tiles(node, ctx, out, boxes, region)


@RULES.register(aten.convolution.default, check=_check_conv)
def lower_convolution(node: fx.Node, ctx: LoweringContext):
    if node.args[6] or node_meta(node).dim() == 5:
        return _lower_convolution_of_whole_images(node, ctx)
    x, w, b, stride, padding, dilation, _, _, groups = node.args
    weight, bias = ctx.constant(w), ctx.constant(b) if b is not None else None
    if weight is None or (b is not None and bias is None):
        raise NotImplementedError("aspen: convolution weights must be frozen parameters")
    xref, out_shape = ctx.ref(x), tuple(node_meta(node).shape)
    if len(out_shape) == 3:
        # A 1-d convolution (speech front ends) is a 2-d one over a single row: its
        # activations live as [batch, channels, 1, length] channels-last buffers.
        weight = weight.unsqueeze(2)
        stride, padding, dilation = (1, stride[0]), (0, padding[0]), (1, dilation[0])
        xref = xref.reshaped((xref.shape[0], xref.shape[1], 1, xref.shape[2]))
        out_shape = (out_shape[0], out_shape[1], 1, out_shape[2])
    weight, bias, batch_norm = absorb_batch_norm(node, ctx, weight, bias)
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    n, c, h, wd = xref.shape
    oc, _, kh, kw = weight.shape
    _, _, oh, ow = out_shape
    flops = 2.0 * n * oc * oh * ow * (c // groups) * kh * kw
    weight = weight.contiguous()
    bias_ref = TensorRef.of(ctx.constant_buffer(bias.contiguous())) if bias is not None else None
    packed: dict[tuple[int, ...], Region] = {}
    as_gemm = _runs_as_mkl_gemm(ctx, (kh, kw), stride, padding, groups, weight.numel(), c * h * wd)

    def inputs_for(batch: int, rows: int, pad_h: int, channels: tuple[int, int] = (0, oc), width: int = wd) -> list:
        # One packing per input shape a tile sees (for 1x1 convs the layout depends
        # on the spatial size; MKL packs for the GEMM's rows, its pixels) and per
        # output-channel block; the tiles of one op share a few.
        key = (batch, rows, pad_h, *channels, width)
        if key not in packed:
            block = weight[channels[0]:channels[1]]
            if as_gemm:
                weight_tensor = pack_mkl_weight(block.reshape(block.shape[0], c), batch * rows * width)
            else:
                weight_tensor = ctx.packs.conv(block, [pad_h, padding[1]], stride, dilation, groups,
                                               [batch, c, rows, width])
            ref = TensorRef.of(ctx.constant_buffer(weight_tensor, f"{node.name}_weight"))
            packed[key] = Region(ref, tuple((0, s) for s in weight_tensor.shape))
        bias_region = Region(bias_ref, (channels,)) if bias_ref is not None else None
        return [packed[key], bias_region]

    def ints_of(top: int, bottom: int) -> tuple[int, ...]:
        ints = (stride[0], stride[1], top, bottom, padding[1], dilation[0], dilation[1], groups)
        return (*ints, 1) if as_gemm else ints

    pixel_ranges = _pixel_ranges(ctx, flops, n, (kh, kw), stride, padding, groups, oh * ow,
                                 (weight.numel(), c * h * wd, oc * oh * ow))
    blocks = None if pixel_ranges is not None else _output_channel_blocks(ctx, flops, n, c * h * wd, weight, groups)
    if pixel_ranges is not None:
        out = ctx.new_buffer(node, out_shape)
        out_pixels, in_pixels = out.reshaped((n, oc, 1, oh * ow)), xref.reshaped((n, c, 1, h * wd))
        # One packing for the op, made for the ranges' one width (_equal_range_count).
        weights = inputs_for(1, 1, 0, width=pixel_ranges[0][1] - pixel_ranges[0][0])
        for image in range(n):
            for p0, p1 in pixel_ranges:
                box = ((image, image + 1), (0, c), (0, 1), (p0, p1))
                out_box = ((image, image + 1), (0, oc), (0, 1), (p0, p1))
                tile = Tile(TileKind.CONV2D, Region(out_pixels, out_box), [Region(in_pixels, box), *weights],
                            ints_of(0, 0), [], str(node.target), node.name)
                ctx.add_tile(tile, fusible_for=node)
    elif blocks is None:
        out = _window_tiles(node, ctx, TileKind.CONV2D, xref, out_shape, (kh, kw), stride, padding,
                            dilation, flops, True, inputs_for, ints_of,
                            _images_per_tile(ctx, n, weight.numel(),
                                             _elements_read_per_image(c, (h, wd), (oh, ow), (kh, kw))))
    else:
        out = ctx.new_buffer(node, out_shape)
        i0, i1, top, bottom, seen_rows, seen_pad = _band_rows(Window(kh, stride[0], padding[0], dilation[0]), 0, oh, h)
        for image in range(n):
            for channels in blocks:
                in_box = ((image, image + 1), (0, c), (i0, i1), (0, wd))
                out_box = ((image, image + 1), channels, (0, oh), (0, ow))
                tile = Tile(TileKind.CONV2D, Region(out, out_box),
                            [Region(xref, in_box), *inputs_for(1, seen_rows, seen_pad, channels)],
                            ints_of(top, bottom), [], str(node.target), node.name)
                ctx.add_tile(tile, fusible_for=node)
    if out.shape != tuple(node_meta(node).shape):
        out = out.reshaped(node_meta(node).shape)  # a 1-d convolution's [batch, channels, length] view
    if batch_norm is not None:
        ctx.absorb(node, batch_norm, (out, None, None))
    return out


def _pool_flops(out_shape, kernel) -> float:
    """Pooling is memory-bound: its output elements count at the memory-bound rate (ResNet-50's
    3x3 max pool, 0.6 ms on one DSE, had been one tile by its ~2 MFLOP of compares)."""
    return float(out_shape.numel()) * max(kernel[0] * kernel[1], MEMORY_BOUND_FLOPS_PER_ELEMENT)


def _uses_pooling_indices(node: fx.Node) -> bool:
    return any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users)


def _check_max_pool(node: fx.Node, is_frozen):
    # With the indices, ATen's own kernel runs (any dtype it takes); the window tiles are float32.
    return None if _uses_pooling_indices(node) else float32_only(node)


@RULES.register(aten.max_pool2d_with_indices.default, check=_check_max_pool)
def lower_max_pool2d(node: fx.Node, ctx: LoweringContext):
    """Window tiles of the values; pooling whose indices are used (for max_unpool2d) runs
    ATen's kernel over whole planes, as an index counts from the start of its plane."""
    if _uses_pooling_indices(node):
        return lower_spatial_whole(node, ctx)
    args = list(node.args) + [None] * (6 - len(node.args))
    x, kernel, stride, padding, dilation, ceil_mode = args
    kernel = pair(kernel)
    stride = pair(stride) if stride else kernel
    padding, dilation = pair(padding or 0), pair(dilation or 1)
    oshape = node_meta(node).shape
    out = _window_tiles(
        node, ctx, TileKind.MAX_POOL2D, x, oshape, kernel, stride, padding, dilation, _pool_flops(oshape, kernel),
        not ceil_mode, lambda *_: [], lambda top, bottom: (*kernel, *stride, top, padding[1], *dilation))
    return (out, None)


def _check_avg_pool(node: fx.Node, is_frozen):
    return float32_only(node) if node_meta(node.args[0]).dim() == 4 else "avg_pool2d of a 3-d input"


@RULES.register(aten.avg_pool2d.default, check=_check_avg_pool)
def lower_avg_pool2d(node: fx.Node, ctx: LoweringContext):
    args = list(node.args) + [None] * (7 - len(node.args))
    x, kernel, stride, padding, ceil_mode, count_include_pad, divisor = args
    kernel = pair(kernel)
    stride = pair(stride) if stride else kernel
    padding = pair(padding or 0)
    count_include_pad = True if count_include_pad is None else bool(count_include_pad)
    # Explicit zero rows only equal the op's own padding when padding counts in the divisor.
    split_rows = not ceil_mode and (count_include_pad or padding[0] == 0)
    return _window_tiles(
        node, ctx, TileKind.AVG_POOL2D, x, node_meta(node).shape, kernel, stride, padding, (1, 1),
        _pool_flops(node_meta(node).shape, kernel), split_rows,
        lambda *_: [],
        lambda top, bottom: (*kernel, *stride, top, bottom, padding[1], int(bool(ceil_mode)),
                             int(count_include_pad), int(divisor or 0)))


def _lower_mean(node: fx.Node, ctx: LoweringContext, x, dims: list[int], keepdim: bool):
    xref = ctx.ref(x)
    rank = len(xref.shape)
    dims = reduced_dims(dims, rank)
    kept = [d for d in range(rank) if d not in dims]
    out = ctx.new_buffer(node)
    # Memory-bound; cut along a kept batch dim, each image's mean runs right after its last
    # tile (a classifier head's pooling was one tile waiting for the whole batch).
    flops = MEMORY_BOUND_FLOPS_PER_ELEMENT * node_meta(x).numel()
    batch = xref.shape[0] if 0 in kept else 1
    parts = ctx.policy.num_tiles(flops, max(1, node_meta(node).numel()), batch=batch)
    for in_box in split_dims(xref.shape, tuple(kept), parts):
        in_box = tuple((0, xref.shape[d]) if d in dims else in_box[d] for d in range(rank))
        out_box = tuple((0, 1) if d in dims else in_box[d] for d in range(rank)) if keepdim else \
            tuple(in_box[d] for d in kept)
        tile = Tile(TileKind.MEAN, Region(out, out_box), [Region(xref, in_box)], tuple(dims), [],
                    str(node.target), node.name)
        ctx.add_tile(tile, fusible_for=node)
    return out


def _check_mean(node: fx.Node, is_frozen):
    return "mean with dtype=" if node.kwargs.get("dtype") is not None else float32_only(node)


@RULES.register(aten.mean.dim, aten.mean.default, check=_check_mean)
def lower_mean(node: fx.Node, ctx: LoweringContext):
    """mean.default and an empty or absent dim list reduce over every dim."""
    args = named_schema_args(node)
    dims = list(args.get("dim") or range(node_meta(node.args[0]).dim()))
    return _lower_mean(node, ctx, node.args[0], dims, bool(args.get("keepdim", False)))


@RULES.register(aten._adaptive_avg_pool2d.default)
def lower_adaptive_avg_pool2d(node: fx.Node, ctx: LoweringContext):
    """To 1x1 (classifier heads) a mean; to other sizes ATen's kernel over (image, channel) blocks."""
    if tuple(node.args[1]) in ((1, 1), (1,)) and float32_only(node) is None:
        return _lower_mean(node, ctx, node.args[0], [-1, -2], True)
    return lower_whole_along(node, ctx, _spatial_dims(node))


SPATIAL_3D = (aten.reflection_pad3d.default, aten.replication_pad3d.default, aten.max_pool3d_with_indices.default,
              aten.avg_pool3d.default, aten._adaptive_avg_pool3d.default, aten.adaptive_max_pool3d.default)


@RULES.register(aten.adaptive_max_pool2d.default, aten.reflection_pad1d.default, aten.reflection_pad2d.default,
                aten.replication_pad1d.default, aten.replication_pad2d.default, aten._upsample_bilinear2d_aa.default,
                aten._upsample_bicubic2d_aa.default, *SPATIAL_3D)
def lower_spatial_whole(node: fx.Node, ctx: LoweringContext):
    """Reflection / replication padding, adaptive max pooling, max pooling with indices, 3-d
    pooling (also local response norm's) and antialiased resizing: ATen's kernel over
    (image, channel) blocks, each reading its planes (volumes) whole."""
    return lower_whole_along(node, ctx, _spatial_dims(node))


def _spatial_dims(node: fx.Node) -> tuple[int, ...]:
    """The dims after (batch, channels); an unbatched input has only channels before them."""
    rank = node_meta(node).dim()
    spatial = 3 if node.target in SPATIAL_3D else \
        1 if node.target in (aten.reflection_pad1d.default, aten.replication_pad1d.default) else 2
    return tuple(range(rank - spatial, rank))
