"""APU structure: receptive-field math, tile counts, and edges that follow index ranges."""
from __future__ import annotations

import itertools
import random

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dispatch.python import enable_python_dispatcher
from helpers import assert_matches_eager

import aspen_torch
from aspen_torch.apu.policy import TilePolicy, split_dims, split_range
from aspen_torch.apu.rules.conv_pool import _band_rows
from aspen_torch.apu.prepack import PackedWeights
from aspen_torch.apu.tile_graph import Buffer, TensorRef, view_strides
from aspen_torch.apu.window import Window, output_bands


def test_window_input_rows():
    conv = Window(kernel=3, stride=1, padding=1, dilation=1)
    assert conv.input_rows(0, 4, 10) == (0, 5, 1, 0)
    assert conv.input_rows(4, 8, 10) == (3, 9, 0, 0)
    assert conv.input_rows(8, 10, 10) == (7, 10, 0, 1)
    assert conv.input_rows(0, 10, 10) == (0, 10, 1, 1)
    strided = Window(kernel=7, stride=2, padding=3, dilation=1)
    assert strided.input_rows(0, 56, 112) == (0, 112, 3, 2)
    dilated = Window(kernel=3, stride=1, padding=2, dilation=2)
    assert dilated.input_rows(3, 5, 9) == (1, 7, 0, 0)


def test_band_rows_give_each_band_exactly_its_output_rows():
    """What a conv tile computes (its real input rows, with its pads: symmetric ones as the
    op's padding, unequal ones as zero rows) equals the band of the op's output, for any
    kernel, stride, padding, dilation and cut; equal pads keep the rows in place (no copy).
    Small integers, so every sum is exact whatever order oneDNN's kernel for a shape adds in."""
    x = torch.randint(-8, 9, (1, 1, 23, 1)).float()
    weight = torch.randint(-4, 5, (1, 1, 5, 1)).float()
    for kernel, stride, padding, dilation, height in itertools.product(
            range(1, 6), range(1, 4), range(0, 3), (1, 2), range(4, 23)):
        expected = F.conv2d(x[:, :, :height], weight[:, :, :kernel], stride=(stride, 1), padding=(padding, 0),
                            dilation=(dilation, 1)) if padding <= kernel // 2 * dilation and \
            height + 2 * padding >= dilation * (kernel - 1) + 1 else None
        if expected is None:
            continue
        rows = Window(kernel, stride, padding, dilation)
        out_rows = expected.shape[2]
        for bands in range(1, 4):
            for o0, o1 in split_range(out_rows, bands):
                i0, i1, top, bottom, seen_rows, seen_pad = _band_rows(rows, o0, o1, height)
                band = x[:, :, i0:i1]
                if top != bottom:
                    band = F.pad(band, (0, 0, top, bottom))
                assert band.shape[2] == seen_rows and seen_pad == (top if top == bottom else 0)
                got = F.conv2d(band, weight[:, :, :kernel], stride=(stride, 1), padding=(seen_pad, 0),
                               dilation=(dilation, 1))
                assert torch.equal(got, expected[:, :, o0:o1]), (kernel, stride, padding, dilation, height, o0, o1)
    stride_two = Window(kernel=3, stride=2, padding=1, dilation=1)
    assert _band_rows(stride_two, 0, 28, 56)[2:4] == (1, 1), "no window reaches below an even height"
    assert _band_rows(stride_two, 0, 14, 56)[2:4] == (1, 1)
    assert _band_rows(Window(3, 1, 1, 1), 0, 28, 56)[2:4] == (1, 0), "stride 1: the next band's row is read"


def test_output_bands_prefer_batch_then_rows():
    assert output_bands(8, 7, 4, True) == [(0, 2, 0, 7), (2, 4, 0, 7), (4, 6, 0, 7), (6, 8, 0, 7)]
    assert output_bands(1, 10, 3, True) == [(0, 1, 0, 4), (0, 1, 4, 7), (0, 1, 7, 10)]
    assert output_bands(1, 10, 3, False) == [(0, 1, 0, 10)]


def test_split_helpers():
    assert split_range(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_range(2, 5) == [(0, 1), (1, 2)]
    boxes = split_dims((2, 3, 8), (0, 2), 6)
    assert len(boxes) == 6 and all(b[1] == (0, 3) for b in boxes)
    policy = TilePolicy(num_dses=2, tiles_per_dse=4, min_tile_flops=100)
    assert policy.num_tiles(50, 100) == 1
    assert policy.num_tiles(1e9, 100) == 8
    assert policy.num_tiles(1e9, 3) == 3


def test_view_strides_follow_aten_even_under_the_python_dispatcher():
    """A ref reshapes as a view exactly where eager's view would (random shapes, permutes and
    narrows, dims of size 1, empty tensors). Hiera's attention merged dims across a gap beside
    a dim of size 1: the meta view AOTAutograd's Python dispatcher runs accepted it, and the
    plan failed on the real buffer."""
    rng = random.Random(0)
    for _ in range(3000):
        tensor = torch.empty([rng.choice([0, 1, 1, 2, 3, 4] if rng.random() < 0.05 else [1, 1, 2, 3, 4])
                              for _ in range(rng.randint(0, 4))])
        if tensor.dim() >= 2:
            tensor = tensor.permute(rng.sample(range(tensor.dim()), tensor.dim()))
        if tensor.dim() and tensor.shape[0] > 1 and rng.random() < 0.3:
            tensor = tensor.narrow(0, 1, tensor.shape[0] - 1)
        shape = list(tensor.shape)
        new_shape = rng.choice([[tensor.numel()], [1, tensor.numel(), 1],
                                [shape[0] * shape[1]] + shape[2:] if len(shape) >= 2 else shape,
                                shape[:1] + [1] + shape[1:]])
        try:
            expected = tensor.view(new_shape).stride()
        except RuntimeError:
            expected = None
        strides = view_strides(tensor.shape, tensor.stride(), new_shape)
        assert (strides is None) == (expected is None), (tensor.shape, tensor.stride(), new_shape)
        if expected is not None:
            assert all(a == b for a, b, n in zip(strides, expected, new_shape) if n != 1)

    ref = TensorRef.of(Buffer("qkv", (512, 48), torch.float32)).reshaped((2, 16, 16, 3, 1, 16))
    ref = ref.then("permute", (3, 0, 4, 2, 1, 5), (3, 2, 1, 16, 16, 16)).then("select", (0, 1), (2, 1, 16, 16, 16))
    ref = ref.then("permute", (0, 1, 2, 4, 3), (2, 1, 16, 16, 16))
    with enable_python_dispatcher():
        assert ref.reshaped((32, 16, 16)) is None
        assert ref.reshaped((2, 16, 16, 16)) is not None


def test_conv_chain_edges_follow_receptive_fields():
    """Two 3x3 convs cut into row bands: a band of the second reads its rows plus a one-row
    halo, so it depends on the overlapping bands of the first, not on all of them."""
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)).eval()
    options = {"strict": True, "min_tile_flops": 1.0, "tiles_per_dse": 4, "num_dses": 2}
    report = aspen_torch.explain(model, torch.randn(1, 4, 16, 8), options=options)
    (graph,) = report.tile_graphs
    first = [i for i, t in enumerate(graph.tiles) if t.node_name == "convolution"]
    second = [i for i, t in enumerate(graph.tiles) if t.node_name == "convolution_1"]
    assert len(first) == len(second) == 8
    parents = {c: sorted(p for p, cc in graph.edges if cc == c) for c in second}
    for k, child in enumerate(second):
        expected = [first[j] for j in range(max(0, k - 1), min(8, k + 2))]
        assert parents[child] == expected, "each band reads its own rows and the neighbouring halo rows"


def test_explain_reports_tiles_and_fallbacks():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return F.pdist(self.conv(x).flatten(1))  # pdist has no APU rule

    report = aspen_torch.explain(Model().eval(), torch.randn(1, 3, 32, 32))
    assert report.fallback_ops == {"aten._pdist_forward.default": 1}
    assert report.tiles_per_op["aten.convolution.default"] >= 1
    assert report.num_tiles == sum(report.tiles_per_op.values())
    text = str(report)
    assert "aten._pdist_forward.default" in text and "tiles per op" in text


def test_pointwise_fuses_into_producer_through_views_and_permutes():
    """GELU behind a reshape, a residual add behind a reshape and a scale behind a permute
    run as epilogues of the linear tiles (no tiles of their own), and still match eager."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down, self.q = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 16)

        def forward(self, x):  # x: [batch, seq, 16]
            h = F.gelu(self.up(x.reshape(-1, 16)).view(x.shape[0], x.shape[1], 32))
            y = self.down(h.reshape(-1, 32)).view(x.shape) + x
            q = self.q(y).view(x.shape[0], x.shape[1], 4, 4).permute(0, 2, 1, 3) * 0.5
            return q.sum(-1)

    report = assert_matches_eager(Model().eval(), torch.randn(2, 8, 16))
    assert not {"aten.gelu.default", "aten.add.Tensor", "aten.mul.Tensor", "aten.mul.Scalar"} & set(report.tiles_per_op)


def test_large_batches_are_cut_into_small_chunks():
    """Depth-first needs tiles small enough to stay in cache: a batch of 32 on 2 DSEs is cut
    into one image a tile, not into 2 halves, unless a conv's weights outweigh its images:
    then chunks whose images weigh as much as the weights, as long as each DSE has one."""
    policy = TilePolicy(num_dses=2)
    assert policy.num_tiles(1e9, 32, batch=32) == 32
    assert policy.num_tiles(1e9, 32, batch=32, images_per_tile=3) == 11
    assert policy.num_tiles(1e9, 112, batch=1) == 2
    light = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    report = aspen_torch.explain(light, torch.randn(16, 3, 16, 16), options={"num_dses": 2, "min_tile_flops": 1.0})
    assert report.tiles_per_op["aten.convolution.default"] == 16
    # 3x3x64x64 weights (36864) against 4x4x64 images (1024): chunks of 8 images, one per DSE.
    heavy = nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(16, 64, 4, 4)
    (graph,) = aspen_torch.explain(heavy, x, options={"strict": True, "num_dses": 2}).tile_graphs
    assert sorted(t.out.box[0] for t in graph.tiles) == [(0, 8), (8, 16)]
    # 3x3x16x16 weights (2304) against 8x8x16 images (1024): chunks of 3 images.
    (graph,) = aspen_torch.explain(nn.Conv2d(16, 16, 3, padding=1).eval(), torch.randn(12, 16, 8, 8),
                                   options={"strict": True, "num_dses": 2, "min_tile_flops": 1.0}).tile_graphs
    assert sorted(t.out.box[0] for t in graph.tiles) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert_matches_eager(heavy, x, options={"num_dses": 2})


def test_strided_downsample_chunks_count_the_pixels_it_reads():
    """A stride-2 1x1 conv reads a quarter of each image: its chunks weigh that quarter
    against the weights. 1x1x64x128 weights (8192) against 8x8x64 read of 16x16x64 images
    (4096 of 16384): chunks of 2 images, where all of each image would give 1."""
    conv = nn.Conv2d(64, 128, 1, stride=2).eval()
    x = torch.randn(8, 64, 16, 16)
    options = {"strict": True, "num_dses": 2, "min_tile_flops": 1.0}
    (graph,) = aspen_torch.explain(conv, x, options=options).tile_graphs
    assert sorted(t.out.box[0] for t in graph.tiles) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    # A 3x3 kernel at stride 2 reads every pixel: 36864 weights against 16384 read, chunks of 3
    # (a quarter of the image counted would give chunks of 4, half the batch).
    (graph,) = aspen_torch.explain(nn.Conv2d(64, 64, 3, stride=2, padding=1).eval(), x, options=options).tile_graphs
    assert sorted(t.out.box[0] for t in graph.tiles) == [(0, 3), (3, 6), (6, 8)]
    assert_matches_eager(conv, x, options={"num_dses": 2, "min_tile_flops": 1.0})


def test_empty_batch_needs_no_tiles():
    """A batch of 0 images: the ops with empty outputs get buffers but no tiles (rules cut
    outputs by their sizes and would divide by zero); reductions over the empty batch,
    and a cat with a non-empty tensor, still run as tiles and match eager."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

        def forward(self, x):
            y = self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))
            return y, y.sum(0), y.mean(0), torch.cat([y, torch.ones(2, 4)])

    model = Model().eval()
    report = assert_matches_eager(model, torch.randn(0, 3, 16, 16))
    assert set(report.tiles_per_op) == {"aten.sum.dim_IntList", "aten.mean.dim", "aten.cat.default"}
    with torch.no_grad():
        assert aspen_torch.explain(model.conv, torch.randn(0, 3, 16, 16), options={"strict": True}).num_tiles == 0


def test_packed_weights_are_shared_only_for_equal_weights():
    """One packing per distinct weight, found again for an equal copy (other instances,
    other shapes' plans), never for a different weight with the same shape and sum."""
    packs = PackedWeights()
    w = torch.randn(96, 64)
    packed = packs.linear(w, 8)
    assert packs.linear(w.clone(), 32) is packed, "oneDNN's linear layout does not depend on the rows"
    swapped = w.clone()
    swapped[[0, 1]] = swapped[[1, 0]]  # same sum, other weight
    other = packs.linear(swapped, 8)
    assert other is not packed and torch.equal(other.to_dense(), swapped)
    conv = torch.randn(16, 8, 3, 3)
    args = ([1, 1], [1, 1], [1, 1], 1)
    assert packs.conv(conv, *args, [1, 8, 14, 14]) is packs.conv(conv.clone(), *args, [1, 8, 14, 14])
    assert packs.conv(conv, *args, [1, 8, 14, 14]) is not packs.conv(conv, *args, [1, 8, 28, 28])
    assert len(packs) > 0
    del packed, other
    assert len(packs) == 0, "a packing nobody holds is dropped"
