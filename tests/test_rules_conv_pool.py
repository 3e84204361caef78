"""Convolution and pooling rules vs eager: strides, padding, dilation, groups, odd and non-square sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_eager

import aspen_torch
from aspen_torch.apu.prepack import mkl_linear_available
from aspen_torch.apu.rules import conv_pool
from aspen_torch.memory_plan import plan_memory


class Conv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias)

    def forward(self, x):
        return self.conv(x)


CONV_CASES = [
    # cin, cout, k, stride, padding, dilation, groups, bias, input (N, H, W)
    (3, 8, 3, 1, 1, 1, 1, True, (1, 17, 23)),
    (8, 16, 3, 2, 1, 1, 1, False, (2, 31, 20)),
    (8, 16, 3, 2, 1, 1, 1, True, (1, 32, 20)),    # strided over an even height: no bottom pad read
    (8, 8, 3, 1, 2, 2, 1, True, (1, 19, 19)),
    (16, 16, 3, 1, 1, 1, 16, True, (3, 15, 9)),   # depthwise
    (16, 32, 3, 2, 1, 1, 4, True, (1, 22, 13)),   # grouped, strided
    (16, 24, 1, 1, 0, 1, 1, False, (2, 14, 14)),  # pointwise
    (16, 24, 1, 2, 0, 1, 1, True, (1, 15, 28)),   # strided 1x1 (downsample)
    (3, 16, 7, 2, 3, 1, 1, False, (1, 64, 48)),   # ResNet stem
    (8, 8, (3, 5), (2, 1), (1, 2), 1, 1, True, (2, 21, 17)),  # non-square kernel
    (4, 8, 5, 3, 0, 1, 2, True, (1, 30, 26)),     # no padding, stride 3
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d(case):
    cin, cout, k, stride, padding, dilation, groups, bias, (n, h, w) = case
    model = Conv(cin, cout, k, stride, padding, dilation, groups, bias).eval()
    report = assert_matches_eager(model, torch.randn(n, cin, h, w), options={"min_tile_flops": 1e4})
    assert report.tiles_per_op["aten.convolution.default"] > 1, "the conv is cut into several tiles"


@pytest.mark.parametrize("channels_last", [False, True])
def test_image_input_keeps_the_callers_layout(channels_last):
    """A 4-d input is copied in as the caller lays it out (a plain copy, no transpose on the
    caller's thread); the stem's row bands convert their own rows, padding included."""
    model = Conv(3, 16, 7, 2, 3).eval()
    x = torch.randn(2, 3, 45, 38)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    options = {"num_dses": 2, "tiles_per_dse": 3, "min_tile_flops": 1e4}
    assert_matches_eager(model, x, options=options)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, **options}).tile_graphs
    assert graph.input_refs[0].buffer.channels_last == channels_last
    assert len([t for t in graph.tiles if t.op_label == "aten.convolution.default"]) > 2, "cut within images"


@pytest.mark.parametrize("args,shape", [
    ((8, 4, 3, 2, 1, 1), (2, 8, 6, 7)),         # stride 2, output padding: cut by batch
    ((64, 48, 4, 2, 1), (1, 64, 5, 6)),         # one image: output-channel blocks
    ((8, 8, 3, 1, 1, 0, 2), (3, 8, 6, 7)),      # grouped
    ((16, 8, 3, 2, 0, 0, 1, True, 2), (1, 16, 4, 5)),  # dilated, one image, fewer channels than a block
    ((32, 16, 4, 2, 1), (2, 32, 25)),           # 1-d (vocoders)
    ((64, 32, 3, 3), (1, 64, 17)),              # 1-d, one sequence: output-channel blocks
    ((8, 4, 2, 2), (2, 8, 3, 4, 5))])           # 3-d
def test_transposed_conv(args, shape):
    """Decoder upsampling with BN and ReLU after it (fused as the tiles' epilogue)."""
    conv, norm = {3: (nn.ConvTranspose1d, nn.BatchNorm1d), 4: (nn.ConvTranspose2d, nn.BatchNorm2d),
                  5: (nn.ConvTranspose3d, nn.BatchNorm3d)}[len(shape)]
    model = nn.Sequential(conv(*args), norm(args[1]), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    report = assert_matches_eager(model, torch.randn(*shape), options={"min_tile_flops": 1e3, "num_dses": 2})
    assert set(report.tiles_per_op) == {"aten.convolution.default"}
    tiles = report.tiles_per_op["aten.convolution.default"]
    assert tiles == 1 if shape[0] == 1 and args[1] < 16 else tiles > 1


@pytest.mark.parametrize("args,shape", [
    ((4, 8, 3, 1, 1), (2, 4, 5, 6, 7)),            # cut by batch
    ((8, 48, 3, 2, 1, 2), (1, 8, 7, 9, 8)),        # one clip: output-channel blocks; stride 2, dilation 2
    ((8, 8, (1, 3, 3), 1, (0, 1, 1), 1, 2), (3, 8, 4, 6, 5))])  # grouped, (2+1)-d style kernel
def test_conv3d(args, shape):
    """Video and volume convolutions with BN (folded) and ReLU after them."""
    model = nn.Sequential(nn.Conv3d(*args), nn.BatchNorm3d(args[1]), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    report = assert_matches_eager(model, torch.randn(*shape), options={"min_tile_flops": 1e3, "num_dses": 2})
    assert set(report.tiles_per_op) == {"aten.convolution.default"}
    assert report.tiles_per_op["aten.convolution.default"] > 1


def test_conv_followed_by_batch_norm_is_folded():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    report = assert_matches_eager(model, torch.randn(2, 4, 13, 11))
    assert set(report.tiles_per_op) == {"aten.convolution.default"}, "BN and ReLU run inside the conv tiles"


class ResidualConv(nn.Module):
    """ResNet's late-layer pattern: weights far larger than the 7x7-ish image, BN, residual add, ReLU."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(1, stride)

    def forward(self, x):
        identity = self.pool(x)  # first, so the add can run in the conv tiles (which come later)
        return torch.relu(self.bn(self.conv(x)) + identity)


@pytest.mark.parametrize("channels,batch,stride,tiles_per_dse", [
    (64, 1, 1, 1), (64, 1, 2, 3), (64, 2, 1, 2), (128, 1, 2, 4)])
def test_heavy_weight_conv_is_cut_into_output_channel_blocks(channels, batch, stride, tiles_per_dse):
    """Weights larger than an image: each tile convolves whole images with a block of output
    channels (row bands would each re-read all weights), writing a channel slice of the
    channels-last buffer, with BN, the residual add and ReLU fused. Blocks are not capped
    by the output's rows (4 rows at stride 2, 8 tiles wanted)."""
    model = ResidualConv(channels, stride).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(batch, channels, 7, 6)
    options = {"num_dses": 2, "tiles_per_dse": tiles_per_dse, "min_tile_flops": 1e4}
    assert_matches_eager(model, x, options=options)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, **options}).tile_graphs
    conv = [t for t in graph.tiles if t.op_label == "aten.convolution.default"]
    blocks = {t.out.box[1] for t in conv}
    assert len(blocks) > 1 and len(conv) == batch * len(blocks)
    if channels == 128:
        assert len(blocks) == 8 > conv[0].out.ref.shape[2]
    assert all(t.out.box[2] == (0, t.out.ref.shape[2]) for t in conv), "every tile has all rows"
    assert all(t.epilogue for t in conv), "the residual add and ReLU run inside the conv tiles"


class ResidualPointwiseConv(nn.Module):
    """ResNet's bottleneck end: a 1x1 conv, BN, the shortcut (an activation, dying here), ReLU,
    then a head, so the block's output is an intermediate."""

    def __init__(self, channels: int):
        super().__init__()
        self.pre = nn.Conv2d(channels, channels, 3, padding=1)
        self.mid = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.relu(self.pre(x))
        return torch.relu(self.bn(self.conv(torch.relu(self.mid(y)))) + y).amax((2, 3))


@pytest.mark.parametrize("batch,tiles_per_dse", [(1, 1), (1, 3), (2, 2)])
def test_pointwise_conv_is_cut_into_pixel_ranges(batch, tiles_per_dse):
    """A 1x1 stride-1 conv cut within images takes ranges of pixels (a GEMM over channels-last
    pixels): of one width over 8x8 = 64 pixels, dense, and written over its dying shortcut in
    place, with BN, the add and ReLU fused."""
    model = ResidualPointwiseConv(64).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(batch, 64, 8, 8)
    options = {"num_dses": 2, "tiles_per_dse": tiles_per_dse, "min_tile_flops": 1e4}
    assert_matches_eager(model, x, options=options)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, **options}).tile_graphs
    conv = [t for t in graph.tiles if t.node_name == "convolution_2"]
    sizes = [t.out.box[3][1] - t.out.box[3][0] for t in conv]
    assert len(conv) > batch, "cut within images"
    assert len(set(sizes)) == 1 and sum(sizes) == batch * 64, "one width: one packing serves every range"
    assert all(t.out.ref.shape == (batch, 64, 1, 64) and t.epilogue for t in conv)
    shortcut = conv[0].args[conv[0].epilogue[0].operand].ref.buffer
    memory = plan_memory(graph)
    assert memory.slot_of[conv[0].out.ref.buffer] == memory.slot_of[shortcut], "written in place"


def test_pointwise_conv_over_pixels_with_no_even_cut_takes_channel_blocks():
    """7x7 = 49 pixels for two tiles would be ranges of 25 and 24, which oneDNN's AVX2 kernel
    packs in different layouts (one reorder of the weights per call): whole images cut into
    output-channel blocks instead."""
    model = ResidualPointwiseConv(64).eval()
    x = torch.randn(1, 64, 7, 7)
    options = {"num_dses": 2, "min_tile_flops": 1e4}
    assert_matches_eager(model, x, options=options)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, **options}).tile_graphs
    conv = [t for t in graph.tiles if t.node_name == "convolution_2"]
    assert len(conv) == 2 and all(t.out.box[2:] == ((0, 7), (0, 7)) for t in conv), "whole images"


@pytest.mark.parametrize("pixels,wanted,count", [(64, 2, 2), (64, 6, 8), (3136, 3, 4), (49, 2, None), (49, 5, 7),
                                                 (13, 4, None)])
def test_equal_pixel_range_count_is_the_divisor_nearest_the_wanted_count(pixels, wanted, count):
    assert conv_pool._equal_range_count(pixels, wanted) == count


def test_pointwise_conv_with_weights_outweighing_the_image_is_cut_into_channel_blocks():
    """Pixel ranges each read all the weights: with 256 x 256 weights over a 7x7 image (more
    than the image read plus twice the image written) the 1x1 conv takes output-channel
    blocks of whole images instead, so each tile reads its share of the weights."""
    model = ResidualPointwiseConv(256).eval()
    x = torch.randn(1, 256, 7, 7)
    options = {"num_dses": 2, "min_tile_flops": 1e4}
    assert_matches_eager(model, x, options=options)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, **options}).tile_graphs
    conv = [t for t in graph.tiles if t.node_name == "convolution_2"]
    assert len(conv) == 2 and {t.out.box[1] for t in conv} == {(0, 128), (128, 256)}
    assert all(t.out.box[2:] == ((0, 7), (0, 7)) and t.epilogue for t in conv), "whole images, add fused"


@pytest.mark.parametrize("linear_kernel", [
    pytest.param("mkl", marks=pytest.mark.skipif(not mkl_linear_available(), reason="no MKL packed GEMM")), "onednn"])
@pytest.mark.parametrize("channels,size,batch,tiles_per_dse", [(64, 8, 1, 1), (256, 7, 1, 1), (64, 4, 8, 1),
                                                               (64, 6, 2, 2)])
def test_pointwise_conv_whose_weights_outweigh_an_image_runs_as_mkl_gemm(linear_kernel, channels, size, batch,
                                                                        tiles_per_dse):
    """Where MKL runs the linears, a 1x1 stride-1 conv whose weights outweigh an input image
    runs MKL's packed GEMM over its channels-last pixels, in pixel ranges (64 channels over
    8x8 and 6x6), output-channel blocks (256 over 7x7) and chunks of 4 images (4x4), with BN
    folded, the residual added over the dying shortcut's own bytes and ReLU keeping a NaN;
    with oneDNN's linears it stays oneDNN's convolution."""
    model = ResidualPointwiseConv(channels).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(batch, channels, size, size)
    if batch > 1:
        x[-1, 1, 2, 3] = float("nan")  # the head's max spreads it over its image's outputs
    options = {"num_dses": 2, "tiles_per_dse": tiles_per_dse, "min_tile_flops": 1e4, "linear_kernel": linear_kernel}
    assert_matches_eager(model, x, options=options)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, **options}).tile_graphs
    conv = [t for t in graph.tiles if t.node_name == "convolution_2"]
    assert {t.ints[8:] for t in conv} == {(1,) if linear_kernel == "mkl" else ()}
    assert max(t.out.box[0][1] - t.out.box[0][0] for t in conv) == (4 if batch == 8 else 1)
    assert all(t.epilogue for t in conv), "the residual add and ReLU run inside the conv tiles"
    shortcut = conv[0].args[conv[0].epilogue[0].operand].ref.buffer
    memory = plan_memory(graph)
    assert memory.slot_of[conv[0].out.ref.buffer] == memory.slot_of[shortcut], "written in place"


@pytest.mark.skipif(not mkl_linear_available(), reason="no MKL packed GEMM")
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_as_mkl_gemm_reads_inputs_in_the_callers_layout(channels_last):
    """The conv's input and the residual it adds are the caller's tensors, which keep their
    layout: the GEMM tiles read NCHW ones through a channels-last copy."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(64, 64, 1)

        def forward(self, x, shortcut):
            return torch.relu(self.conv(x) + shortcut)

    layout = torch.channels_last if channels_last else torch.contiguous_format
    x, shortcut = (torch.randn(2, 64, 4, 4).contiguous(memory_format=layout) for _ in range(2))
    options = {"num_dses": 2, "min_tile_flops": 1e4, "linear_kernel": "mkl"}
    report = assert_matches_eager(Model().eval(), x, shortcut, options=options)
    (graph,) = report.tile_graphs
    assert {t.ints[8:] for t in graph.tiles if t.op_label == "aten.convolution.default"} == {(1,)}


@pytest.mark.parametrize("channels,stride", [(8, 1), (64, 2)])
def test_conv_relu_epilogue_keeps_nan(channels, stride):
    """A NaN in the input stays NaN through conv, BN, the residual add and ReLU, as in eager
    (oneDNN's relu post-op is max(x, 0), which gives 0). Row bands (8 channels) and
    output-channel blocks (64)."""
    model = ResidualConv(channels, stride).eval()
    x = torch.randn(2, channels, 9, 8)
    x[0, 1, 4, 3] = float("nan")
    x[1, 0, 0, 0] = float("nan")
    with torch.no_grad():
        assert model(x).isnan().any()
    assert_matches_eager(model, x, options={"num_dses": 2, "tiles_per_dse": 2, "min_tile_flops": 1e4})


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", [
    (3, 2, 1, 1, False), (2, 2, 0, 1, False), (3, 1, 1, 1, False), (3, 2, 0, 2, False),
    (3, 2, 1, 1, True), ((3, 2), (2, 1), (1, 0), 1, False)])
def test_max_pool2d(kernel, stride, padding, dilation, ceil_mode):
    class Pool(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x - 0.5, kernel, stride, padding, dilation, ceil_mode)

    report = assert_matches_eager(Pool(), torch.randn(2, 5, 19, 14), options={"min_tile_flops": 100, "tiles_per_dse": 4})
    if not ceil_mode:  # ceil_mode windows may overhang a band: its images stay whole
        assert report.tiles_per_op["aten.max_pool2d_with_indices.default"] > 2, "bands of rows, not whole images"


def test_max_pool2d_channels_last_bands_propagate_nan():
    """ResNet's stem pool on channels-last input cut into bands; a NaN wins its windows as in eager."""
    class Pool(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x * 1.0, 3, 2, 1)

    x = torch.randn(1, 16, 21, 18).contiguous(memory_format=torch.channels_last)
    x[0, 3, 0, 0] = float("nan")  # a padded corner window (first band)
    x[0, 7, 20, 17] = float("nan")  # the last band's last row
    x[0, 0, 10, 5] = float("nan")
    report = assert_matches_eager(Pool(), x, options={"min_tile_flops": 100, "tiles_per_dse": 4})
    assert report.tiles_per_op["aten.max_pool2d_with_indices.default"] > 2


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,count_include_pad,divisor", [
    (2, 2, 0, False, True, None), (3, 2, 1, False, True, None), (3, 2, 1, False, False, None),
    (3, 1, 1, True, True, None), (3, 2, 1, False, True, 4)])
def test_avg_pool2d(kernel, stride, padding, ceil_mode, count_include_pad, divisor):
    class Pool(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x * 2, kernel, stride, padding, ceil_mode, count_include_pad, divisor)

    assert_matches_eager(Pool(), torch.randn(3, 4, 17, 12), options={"min_tile_flops": 100})


@pytest.mark.parametrize("keepdim", [True, False])
def test_mean_over_spatial_dims(keepdim):
    class Mean(nn.Module):
        def forward(self, x):
            return (x + 1).mean(dim=(2, 3), keepdim=keepdim)

    assert_matches_eager(Mean(), torch.randn(3, 6, 7, 5), options={"min_tile_flops": 10})


def test_mean_over_all_dims():
    """x.mean() (aten.mean.default) and an empty or absent dim list, of a 2-d and a
    channels-last 4-d activation, with and without keepdim."""
    class Mean(nn.Module):
        def forward(self, x, y):
            return x.mean(), (x * 2).mean(dim=[]), y.relu().mean(), (y + 1).mean(dim=None, keepdim=True)

    report = assert_matches_eager(Mean(), torch.randn(7, 33), torch.randn(2, 3, 9, 5))
    assert report.tiles_per_op["aten.mean.default"] == 2 and report.tiles_per_op["aten.mean.dim"] == 2


@pytest.mark.parametrize("after_conv", [False, True])
def test_reflection_replication_padding_and_adaptive_pools(after_conv):
    """Cut by (image, channel), planes whole. Their inputs are channels-last activations:
    ATen's out= kernels would restride the output view to that layout (scrambling it)."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x, seq, vol):
            x = self.conv(x) if after_conv else x * 2
            return (F.pad(x, (1, 2, 2, 1), mode="reflect"), F.pad(x, (1, 1, 1, 1), mode="replicate"),
                    F.pad(seq, (2, 3), mode="reflect"), F.pad(vol, (1, 1, 1, 1, 1, 1), mode="replicate"),
                    F.adaptive_avg_pool2d(x, (3, 2)), F.adaptive_max_pool2d(x, (3, 4), return_indices=True))

    x = torch.randn(2, 4, 8, 10)
    x[0, 1, 2, 3] = float("nan")
    report = assert_matches_eager(Model().eval(), x, torch.randn(2, 3, 9), torch.randn(1, 2, 3, 4, 5),
                                  options={"min_tile_flops": 1})
    for op in ("aten.reflection_pad2d.default", "aten.replication_pad2d.default", "aten.reflection_pad1d.default",
               "aten.replication_pad3d.default", "aten._adaptive_avg_pool2d.default", "aten.adaptive_max_pool2d.default"):
        assert report.tiles_per_op[op] >= 2, op


def test_volume_pooling_local_response_norm_and_antialiased_resizing():
    """3-d max (with indices) / avg / adaptive pooling after a 3-d conv, LocalResponseNorm
    (an avg_pool3d over a channel window) and antialiased bilinear / bicubic resizing:
    ATen's kernels over (image, channel) blocks, volumes and planes whole."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(2, 4, 3, padding=1)
            self.lrn = nn.LocalResponseNorm(3)

        def forward(self, vol, x):
            v = self.conv(vol)
            return (F.max_pool3d(v, 2, return_indices=True), F.avg_pool3d(v, (1, 3, 3), 2, (0, 1, 1)),
                    F.adaptive_avg_pool3d(v, (2, 3, 1)), F.adaptive_max_pool3d(v, 2), self.lrn(x * 2),
                    F.interpolate(x, size=(5, 7), mode="bilinear", antialias=True),
                    F.interpolate(x, scale_factor=0.5, mode="bicubic", antialias=True))

    report = assert_matches_eager(Model().eval(), torch.randn(2, 2, 4, 6, 6), torch.randn(2, 5, 8, 10),
                                  options={"min_tile_flops": 1})
    for op in ("aten.max_pool3d_with_indices.default", "aten.avg_pool3d.default", "aten._adaptive_avg_pool3d.default",
               "aten.adaptive_max_pool3d.default", "aten._upsample_bilinear2d_aa.default",
               "aten._upsample_bicubic2d_aa.default"):
        assert report.tiles_per_op[op] >= 2, op


def test_circular_padding():
    """Circular padding reaches aspen as writes into slices of a new tensor (functional
    copy and slice_scatter), 1-d, 2-d (after a channels-last conv) and 3-d."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")

        def forward(self, x, seq, vol):
            return self.conv(x).relu(), F.pad(x, (2, 1, 1, 3), mode="circular"), F.pad(seq, (3, 2), mode="circular"), \
                F.pad(vol, (1, 1, 2, 0, 1, 1), mode="circular")

    report = assert_matches_eager(Model().eval(), torch.randn(2, 4, 8, 10), torch.randn(2, 3, 9),
                                  torch.randn(1, 2, 3, 4, 5), options={"min_tile_flops": 1})
    assert report.tiles_per_op["aten.slice_scatter.default"] >= 2 and report.tiles_per_op["aten.copy.default"] >= 2


def test_instance_norm_and_batch_norm_from_batch_statistics():
    """Instance norm (2-d after a conv, with affine and a fused ReLU; 1-d) and batch norm
    without running statistics: blocks of channels, each with its whole statistics extent."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.instance_norm = nn.InstanceNorm2d(8, affine=True)
            self.instance_norm_1d = nn.InstanceNorm1d(5)
            self.batch_stats_norm = nn.BatchNorm2d(8, track_running_stats=False)

        def forward(self, x, seq):
            y = self.conv(x)
            return F.relu(self.instance_norm(y)), self.instance_norm_1d(seq), self.batch_stats_norm(y * 2)

    model = Model().eval()
    with torch.no_grad():
        model.instance_norm.weight.uniform_(0.5, 2)
        model.instance_norm.bias.uniform_(-1, 1)
    report = assert_matches_eager(model, torch.randn(2, 3, 9, 7), torch.randn(3, 5, 11), options={"min_tile_flops": 1})
    assert report.tiles_per_op["aten._native_batch_norm_legit.no_stats"] > 3


def test_adaptive_avg_pool_to_one():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1)).eval()
    assert_matches_eager(model, torch.randn(2, 3, 11, 9))


class SpeechFrontEnd(nn.Module):
    """1-d convolutions as speech models use them: strided, grouped, dilated, with batch
    norm, GELU and a residual add after them, then a transpose to [batch, time, channels]."""

    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv1d(8, 16, 5, stride=2, padding=2), nn.BatchNorm1d(16)
        self.b = nn.Conv1d(16, 16, 3, padding=1, groups=4)
        self.c = nn.Conv1d(16, 32, 3, padding=2, dilation=2, bias=False)

    def forward(self, x):
        y = F.gelu(self.bn(self.a(x)))
        y = torch.relu(self.b(y) + y)
        return self.c(y).transpose(1, 2)


def test_conv1d_runs_as_a_one_row_conv2d():
    model = SpeechFrontEnd().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    report = assert_matches_eager(model, torch.randn(3, 8, 50), options={"min_tile_flops": 1e3})
    assert set(report.tiles_per_op) == {"aten.convolution.default"}, "batch norm folded, the rest fused"
    assert report.tiles_per_op["aten.convolution.default"] > 3


@pytest.mark.parametrize("after", ["conv2d", "conv1d", "input"])
def test_group_norm(after):
    """Whole images per tile; after a 1-d conv its [batch, channels, length] view is not
    dense for the kernel and is copied first."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 12, 3, padding=1) if after == "conv2d" else nn.Conv1d(8, 12, 3, padding=1)
            self.norm = nn.GroupNorm(4, 12) if after != "input" else nn.GroupNorm(2, 8)
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 1.5)
                self.norm.bias.uniform_(-1, 1)

        def forward(self, x):
            return F.silu(self.norm(self.conv(x) if after != "input" else x * 2))

    x = torch.randn(4, 8, 9, 7) if after == "conv2d" else torch.randn(4, 8, 30)
    report = assert_matches_eager(Model().eval(), x, options={"min_tile_flops": 1})
    assert report.tiles_per_op["aten.native_group_norm.default"] > 1
