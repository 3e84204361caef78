"""Linear / addmm / mm, batch norm alone, and layout rules (view, flatten, permute, slice, cat) vs eager."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_eager, compile_strict

import aspen_torch
from aspen_torch.apu import prepack
from aspen_torch.apu.prepack import SHARED_PACKS, PackedWeights, mkl_linear_available
from aspen_torch.apu.tile_graph import TileKind
from aspen_torch.runtime import SHARED_RUNTIME


@pytest.mark.parametrize("batch,fin,fout,bias", [(1, 2048, 1000, True), (5, 33, 17, True), (64, 128, 96, False),
                                                  (3, 7, 300, True)])
def test_linear(batch, fin, fout, bias):
    model = nn.Linear(fin, fout, bias=bias).eval()
    report = assert_matches_eager(model, torch.randn(batch, fin), options={"min_tile_flops": 1e4})
    assert sum(report.tiles_per_op.values()) >= 1


def test_linear_of_one_row_is_cut_by_its_weight_bytes():
    """A classifier at batch 1 has few FLOPs but reads MBs of weights: on 2 DSEs it is cut into
    column blocks, each reading half the weights, at the default tile size."""
    model = nn.Linear(2048, 1000).eval()
    x = torch.randn(1, 2048)
    options = {"num_dses": 2}
    assert_matches_eager(model, x, options=options)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, **options}).tile_graphs
    linear = [t for t in graph.tiles if t.op_label == "aten.addmm.default"]
    assert sorted(t.out.box[1] for t in linear) == [(0, 500), (500, 1000)]


@pytest.mark.parametrize("rows,fin,fout,row_blocks,col_blocks", [
    (128, 768, 3072, [(0, 128)], [(0, 1536), (1536, 3072)]),  # BERT at batch 1: few rows, wide weights
    (1024, 768, 768, [(0, 512), (512, 1024)], [(0, 768)]),   # at batch 8: rows outnumber columns
])
def test_linear_tiles_read_the_fewest_elements(rows, fin, fout, row_blocks, col_blocks):
    """Two DSEs' tiles of a linear each read their rows of x and their columns of the weight:
    the cut that reads less per tile is taken (row blocks would make every DSE stream all the
    weights of a few-row product)."""
    model, x = nn.Linear(fin, fout).eval(), torch.randn(rows, fin)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, "num_dses": 2}).tile_graphs
    boxes = [t.out.box for t in graph.tiles if t.op_label == "aten.addmm.default"]
    assert sorted({b[0] for b in boxes}) == row_blocks and sorted({b[1] for b in boxes}) == col_blocks
    assert len(boxes) == 2


def test_linear_over_3d_input():
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8)).eval()
    assert_matches_eager(model, torch.randn(3, 11, 24))


def test_linear_plus_a_parameter_broadcast_over_the_batch():
    """A [1, seq, hidden] parameter added after a linear over [batch x seq] rows (learned
    position embeddings; YOLOS) runs as the linear's epilogue in the [batch, seq, hidden]
    shape, which has no dim of the tile's rows: those tiles run without row parts (making
    the program had failed on them)."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(128, 64)
            self.pos = nn.Parameter(torch.randn(1, 21, 64))

        def forward(self, x):
            return self.fc(x) + self.pos

    report = assert_matches_eager(Model().eval(), torch.randn(4, 21, 128), options={"min_tile_flops": 1e4})
    assert report.tiles_per_op["aten.addmm.default"] > 1 and "aten.add.Tensor" not in report.tiles_per_op


def _linear_tile_kinds(report: aspen_torch.CompileReport) -> set[TileKind]:
    return {t.kind for g in report.tile_graphs for t in g.tiles if t.op_label == "aten.addmm.default"}


needs_mkl = pytest.mark.skipif(not mkl_linear_available(), reason="this torch has no MKL packed GEMM")
# The library of packed linear tiles, and the kind of those tiles.
PACKED_KINDS = [pytest.param("onednn", TileKind.PACKED_LINEAR, id="onednn"),
                pytest.param("mkl", TileKind.MKL_LINEAR, id="mkl", marks=needs_mkl)]
PACKED = object()  # in a parametrization: the packed kind of the kernel under test


@pytest.mark.parametrize("linear_kernel,packed_kind", PACKED_KINDS)
@pytest.mark.parametrize("rows,fin,fout,kind", [(1, 256, 256, TileKind.LINEAR), (1, 4096, 4096, PACKED),
                                                (64, 128, 96, PACKED), (4, 64, 64, TileKind.LINEAR)])
def test_frozen_linear_tiles_run_addmm_or_packed_by_size(rows, fin, fout, kind, linear_kernel, packed_kind):
    """One-row products of up to a few million weights and tiny products run ATen's addmm
    on the weights as they are; larger ones oneDNN or MKL on weights packed for the tile."""
    report = assert_matches_eager(nn.Linear(fin, fout).eval(), torch.randn(rows, fin),
                                  options={"linear_kernel": linear_kernel})
    assert _linear_tile_kinds(report) == {packed_kind if kind is PACKED else kind}


@pytest.mark.parametrize("linear_kernel,packed_kind", PACKED_KINDS)
@pytest.mark.parametrize("rows,fin,fout,kind", [(6, 32, 48, TileKind.LINEAR), (32, 128, 256, PACKED)],
                         ids=["addmm", "packed"])
@pytest.mark.parametrize("activation", [nn.ReLU(), nn.Hardtanh(-0.5, 0.5), nn.ReLU6(), nn.GELU(), nn.SiLU(),
                                        nn.Tanh(), nn.Sigmoid()], ids=lambda m: type(m).__name__)
def test_linear_activation_epilogue_keeps_nan(activation, rows, fin, fout, kind, linear_kernel, packed_kind):
    """A NaN row stays NaN through linear + activation, as in eager: oneDNN's relu and clamp
    post-ops are max/min, which turn NaN into the bound."""
    model = nn.Sequential(nn.Linear(fin, fout), activation).eval()
    x = torch.randn(rows, fin)
    x[2, 5] = float("nan")
    report = assert_matches_eager(model, x, options={"min_tile_flops": 1e3, "linear_kernel": linear_kernel})
    assert set(report.tiles_per_op) == {"aten.addmm.default"}, "the activation runs inside the linear tiles"
    assert _linear_tile_kinds(report) == {packed_kind if kind is PACKED else kind}


@pytest.mark.parametrize("linear_kernel,packed_kind", PACKED_KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_adds_the_residual_in_its_tiles(linear_kernel, packed_kind, bias):
    """x + linear(x), with and without a bias: the add is the linear tiles' epilogue (MKL's
    tiles fill their output with bias and residual, then accumulate the product into it)."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(128, 128, bias=bias)

        def forward(self, x):
            return x + self.fc(x)

    x = torch.randn(40, 128)
    x[3, 7] = float("nan")
    report = assert_matches_eager(Model().eval(), x, options={"min_tile_flops": 1e3, "linear_kernel": linear_kernel})
    assert set(report.tiles_per_op) == {"aten.addmm.default" if bias else "aten.mm.default"}
    assert {t.kind for g in report.tile_graphs for t in g.tiles} == {packed_kind}


def test_auto_linear_kernel_is_measured_once_and_used():
    """'auto' takes the faster packed GEMM on this CPU (measured once per process), and
    oneDNN's where MKL's is missing."""
    packs = PackedWeights()
    choice = packs.linear_kernel("auto")
    assert choice in ("onednn", "mkl") and packs.linear_kernel("auto") == choice
    assert packs.linear_kernel("onednn") == "onednn"
    report = assert_matches_eager(nn.Linear(128, 256).eval(), torch.randn(64, 128))
    expected = {"onednn": TileKind.PACKED_LINEAR, "mkl": TileKind.MKL_LINEAR}[SHARED_PACKS.linear_kernel("auto")]
    assert _linear_tile_kinds(report) == {expected}


def test_auto_linear_kernel_is_measured_only_by_a_graph_that_packs_a_linear(monkeypatch):
    """Timing the two kernels costs a first compile ~0.1 s: a graph with no packed linear
    (convolutions, a linear small enough for addmm) never pays it."""
    measured = []
    monkeypatch.setattr(prepack, "fastest_linear_kernel", lambda: measured.append(1) or "onednn")
    monkeypatch.setattr(aspen_torch.backend, "SHARED_PACKS", PackedWeights())
    assert_matches_eager(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval(), torch.randn(2, 3, 16, 16))
    assert_matches_eager(nn.Linear(8, 4).eval(), torch.randn(2, 8))
    assert measured == []
    report = assert_matches_eager(nn.Linear(128, 256).eval(), torch.randn(64, 128))
    assert measured == [1] and _linear_tile_kinds(report) == {TileKind.PACKED_LINEAR}


def test_auto_linear_kernel_without_mkl_is_onednn(monkeypatch):
    monkeypatch.setattr(prepack, "mkl_linear_available", lambda: False)
    assert prepack.fastest_linear_kernel() == "onednn"


def test_graphs_of_symbolic_sizes_pack_linears_for_onednn():
    """Plans per shape of a graph with symbolic sizes share packings under 'auto': oneDNN's,
    which serve every row count (MKL packs per row count, so each shape would add a copy)."""
    torch._dynamo.reset()
    report = aspen_torch.CompileReport(keep_tile_graphs=True)
    model = nn.Linear(128, 256).eval()
    compiled = torch.compile(model, dynamic=True, backend=lambda gm, ex: aspen_torch.aspen_backend(
        gm, ex, {"strict": True}, report=report))
    with torch.no_grad():
        for rows in (64, 80):
            x = torch.randn(rows, 128)
            torch.testing.assert_close(compiled(x), model(x))
    assert report.num_graphs == 2 and _linear_tile_kinds(report) == {TileKind.PACKED_LINEAR}


@needs_mkl
def test_mkl_packing_is_checked_before_parts_use_it_at_other_rows():
    """A packing made for a tile's rows serves its parts' rows where it computes them as addmm
    does; one that does not (another weight's) is caught, and its parts would run addmm."""
    weight = torch.randn(96, 64)
    packed = prepack.pack_mkl_linear_weight(weight, 32)
    assert all(prepack.mkl_packing_serves(packed, weight, rows) for rows in (1, 7, 16, 64))
    assert not prepack.mkl_packing_serves(packed, torch.randn(96, 64), 16)
    packs = PackedWeights()
    shared = packs.mkl_linear(weight, 32)
    assert packs.mkl_packing_serves(shared, [16, 8]) and shared.aspen_serves_rows == {16: True, 8: True}
    model, x = nn.Linear(64, 96).eval(), torch.randn(128, 64)
    (graph,) = aspen_torch.explain(model, x, options={"strict": True, "num_dses": 2, "linear_kernel": "mkl"}).tile_graphs
    tiles = [t for t in graph.tiles if t.kind == TileKind.MKL_LINEAR]
    assert tiles and all(t.ints == (128, 1) and t.row_parts == 8 for t in tiles), "16-row parts on the packing"


@needs_mkl
def test_mkl_packings_are_shared_per_row_count():
    """Plans of one weight at the same tile rows share an MKL packing; other rows get their own
    (MKL documents a packing for its rows only); a different weight of equal sum is not taken."""
    packs = PackedWeights()
    weight = torch.randn(96, 64)
    first = packs.mkl_linear(weight, 32)
    assert packs.mkl_linear(weight.clone(), 32) is first
    assert packs.mkl_linear(weight, 16) is not first
    swapped = weight.clone()
    swapped[0, 0], swapped[0, 1] = weight[0, 1], weight[0, 0]  # same sum, other matrix
    assert packs.mkl_linear(swapped, 32) is not first


class _ResidualMlp(nn.Module):
    def __init__(self, frozen_weights: bool) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(96, 192), nn.Linear(192, 96)
        self.frozen_weights = frozen_weights

    def forward(self, x):
        # A weight computed from the input is not prepacked: its tiles are plain addmm ones.
        w2 = self.fc2.weight if self.frozen_weights else self.fc2.weight * x.mean()
        return x + F.linear(F.gelu(self.fc1(x)), w2, self.fc2.bias)


@pytest.mark.parametrize("sharing", ["always", "always_with_backups"])
@pytest.mark.parametrize("frozen_weights,linear_kernel", [(True, "onednn"), pytest.param(True, "mkl", marks=needs_mkl),
                                                          (False, "auto")])
def test_linear_row_parts_match_eager(frozen_weights, linear_kernel, sharing):
    """Linear tiles run part by part, as a preempted DSE runs them while idle DSEs take
    parts (with backups: computed into scratch and committed, or taken over), with the
    activation and the residual add fused: the values of eager. (An MKL tile's part runs
    addmm on the unpacked weights: the packing is made for the whole tile's rows.)"""
    x = torch.randn(2, 70, 96)
    x[1, 3, 5] = float("nan")
    previous = SHARED_RUNTIME.get().tile_sharing
    opened_before = sum(aspen_torch.runtime_stats()["tiles_opened_per_dse"])
    aspen_torch.set_tile_sharing(sharing)
    try:
        with aspen_torch.trace() as recorded:
            assert_matches_eager(_ResidualMlp(frozen_weights).eval(), x,
                                 options={"min_tile_flops": 1e5, "linear_kernel": linear_kernel})
    finally:
        aspen_torch.set_tile_sharing(previous)
    linear_events = [e for e in recorded.events if e.op == "aten.addmm.default"]
    assert linear_events and all(e.part >= 0 for e in linear_events)
    assert sum(aspen_torch.runtime_stats()["tiles_opened_per_dse"]) > opened_before


def test_mm_of_two_activations():
    class Model(nn.Module):
        def forward(self, a, b):
            return torch.mm(a * 2, b + 1)

    assert_matches_eager(Model(), torch.randn(37, 19), torch.randn(19, 23))


def test_products_outside_addmms_rule_and_copies_of_views_are_decomposed():
    """addmm with alpha / beta or a 2-d bias (beta = 0 ignores a NaN bias), addmv, addbmm,
    dist and the functional copies of views reach the partitioner as ops aspen tiles
    (decompositions.py); a linear layer's addmm stays addmm."""
    class Model(nn.Module):
        def forward(self, bias, a, b, bias2, v, batch1, batch2):
            return (torch.addmm(bias, a, b, beta=0.5, alpha=2), torch.addmm(bias2, a, b),
                    torch.addmm(bias2 * float("nan"), a, b, beta=0), torch.addmm(bias, a * 3, b),
                    torch.addmv(bias2[:, 0], a, v, alpha=-1), torch.dist(a, a.flip(0), 3),
                    torch.permute_copy(a * 2, (1, 0)), torch.narrow_copy(b + 1, 1, 2, 5),
                    torch.addbmm(bias, batch1, batch2),
                    torch.addbmm(bias2, batch1.transpose(0, 1).contiguous().transpose(0, 1), batch2, beta=-1, alpha=0.5),
                    torch.addbmm(bias2, batch1[:0], batch2[:0]))

    report = assert_matches_eager(Model(), torch.randn(23), torch.randn(37, 19), torch.randn(19, 23),
                                  torch.randn(37, 23), torch.randn(19), torch.randn(5, 37, 11),
                                  torch.randn(5, 11, 23))
    assert report.tiles_per_op["aten.addmm.default"] >= 1 and report.tiles_per_op["aten.mm.default"] >= 3


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (3, 4, 9)])
def test_standalone_batch_norm(shape):
    bn = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = bn

        def forward(self, x):
            return self.bn(torch.sigmoid(x))

    assert_matches_eager(Model().eval(), torch.randn(shape))


def test_flatten_of_channels_last_activation_copies():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 5 * 6, 10)).eval()
    assert_matches_eager(model, torch.randn(2, 3, 7, 8))


@pytest.mark.parametrize("model_channels_last", [False, True])
def test_channels_last_input_through_adaptive_pool(model_channels_last):
    """A channels-last input (as CNN users pass it) makes the pooled [N, C, 1, 1] arrive as
    as_strided to channels-last strides, which only restrides its unit dims: an alias here."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4)).eval()
    if model_channels_last:
        model = model.to(memory_format=torch.channels_last)
    assert_matches_eager(model, torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last))


def test_as_strided_views_of_the_input_storage_are_copied():
    """Overlapping windows of a flat input, a transposing restride, Longformer's overlapping
    chunks of a permuted input (its storage order is not its dim order), an offset into a
    sliced input and a zero stride: copy tiles, each reading the storage span its box
    covers. Returned as it is, a window view aliases its source as in eager."""
    class Windows(nn.Module):
        def forward(self, x, h):
            y = torch.relu(x) + 1
            windows = torch.as_strided(y.flatten(), (5, 3), (2, 1))
            transposed = torch.as_strided(y, (3, 4), (1, 3))
            heads = (h * 2).transpose(0, 1)  # [heads, seq, dim] over storage [seq, heads, dim]
            chunks = heads.as_strided((3, 5, 4, 2), (2, 12, 6, 1))  # windows of 4 positions, step 2
            tail = y[1:]
            shifted = torch.as_strided(tail, (2, 2), (4, 1), tail.storage_offset() + 2)
            repeated = torch.as_strided(tail, (3, 4), (0, 1))
            return windows, windows * 2, transposed * 2, chunks * 1, shifted + 1, repeated * 1

    report = assert_matches_eager(Windows(), torch.randn(3, 4), torch.randn(12, 3, 2),
                                  options={"min_tile_flops": 1, "tiles_per_dse": 3})
    assert report.tiles_per_op["aten.as_strided.default"] > 10


@pytest.mark.parametrize("view", [
    lambda y: torch.as_strided(y[:, :3], (2, 3), (4, 1)),  # an input with gaps in its storage
    lambda y: torch.as_strided(y[:2], (3, 4), (4, 1)),  # past the input's last element
    lambda y: torch.as_strided(y[1:], (2, 2), (4, 1), 0),  # before the input's first element
    lambda y: torch.as_strided(y.split(2)[1], (2, 2), (4, 1), 0),  # before a split piece
])
def test_as_strided_outside_its_input_runs_in_eager(view):
    """Elements outside the input (gaps of a sliced view, before or past its span) are not
    the input's: strict mode names the op; otherwise it runs in eager between partitions,
    with the views (also a split) between it and the tensor whose storage it reads."""
    class Model(nn.Module):
        def forward(self, x):
            return view(torch.relu(x) + 1) * 2

    x = torch.randn(3, 4)
    with pytest.raises(Exception, match="as_strided reading storage outside its input"), torch.no_grad():
        compile_strict(Model().eval())(x)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(Model().eval(), backend="aspen")(x), Model()(x))


def test_views_permute_slice():
    class Model(nn.Module):
        def forward(self, x):
            y = (x * 2).view(3, 4, 10).permute(0, 2, 1)
            z = y[:, 2:7, 1:] + 1
            return z.reshape(3, -1).t().unsqueeze(0) * 3

    assert_matches_eager(Model(), torch.randn(3, 40))


def test_strided_slices_patch_merging():
    """Swin's patch merging: the four 2x2 phases of a [batch, h, w, c] map, cat on channels.
    Strided slices are views; each tile of the cat waits only for the rows it reads."""
    class Model(nn.Module):
        def forward(self, x):
            x = x + 1
            phases = [x[:, i::2, j::2, :] for i in (0, 1) for j in (0, 1)]
            return torch.cat(phases, -1) * 2, x[:, 1:6:3, ::4]

    report = assert_matches_eager(Model(), torch.randn(2, 8, 10, 6), options={"min_tile_flops": 1})
    assert "aten.slice.Tensor" not in report.tiles_per_op


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_cat(dim):
    class Model(nn.Module):
        def forward(self, a, b):
            return torch.cat([torch.relu(a), b * 2], dim=dim)

    a = torch.randn(2, 3, 5, 4)
    shape = list(a.shape)
    shape[dim] = 2
    assert_matches_eager(Model(), a, torch.randn(shape))


@pytest.mark.parametrize("pad,value", [((0, 1, 0, 1), 0.0), ((1, 1, 2, 0), 0.5), ((-1, 2, 0, 0), 0.0),
                                       ((0, 0, 0, 0, 1, -1), -1.0)])
def test_constant_pad_then_conv(pad, value):
    """Explicit padding before a conv (TF-style 'same' padding in MobileNet-style models):
    tiles over batch and channels, each padding (or cropping) its images whole."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 4, 3, stride=2)

        def forward(self, x):
            return self.conv(torch.nn.functional.pad(x * 2, pad, value=value))

    report = assert_matches_eager(Model().eval(), torch.randn(2, 6, 11, 9), options={"min_tile_flops": 1e3})
    assert report.tiles_per_op["aten.constant_pad_nd.default"] > 1


def test_constant_pad_of_every_dim_is_one_tile():
    class Model(nn.Module):
        def forward(self, x):
            return torch.nn.functional.pad(x + 1, (1, 2, 0, 3))

    report = assert_matches_eager(Model(), torch.randn(5, 7), options={"min_tile_flops": 1})
    assert report.tiles_per_op["aten.constant_pad_nd.default"] == 1


def test_writes_into_slices_of_a_new_tensor():
    """In-place writes into slices (a KV-cache update, a strided write, a write that casts)
    reach aspen functionalized as slice_scatter and copy."""
    class Model(nn.Module):
        def forward(self, x, y):
            out = x * 2
            out[:, 1:7:2] = y
            out[-2:, -3:] = y[:2, :1] + 1
            counts = torch.zeros(3, 5, dtype=torch.int64)
            counts[1:] = x[:2, :5] * 10
            return out, counts

    report = assert_matches_eager(Model(), torch.randn(6, 9), torch.randn(6, 3), options={"min_tile_flops": 1})
    assert report.tiles_per_op["aten.slice_scatter.default"] >= 3 and report.tiles_per_op["aten.copy.default"] >= 2


def test_flip_roll_repeat_index_select():
    """Ops that need whole extents along some dims (flipped, repeated, indexed) and are cut along the others."""
    class Model(nn.Module):
        def forward(self, x, index):
            return (torch.flip(x * 2, [0]), torch.flip(x, [1, -1]), torch.roll(x, 1, 1), x.repeat(2, 1, 1),
                    x.repeat(3, 1, 2, 1), torch.index_select(x, 1, index), torch.index_select(x * 1, 0, index[:2]))

    report = assert_matches_eager(Model(), torch.randn(4, 6, 5), torch.tensor([3, 0, 5, 3]),
                                  options={"min_tile_flops": 1})
    for op in ("aten.flip.default", "aten.repeat.default", "aten.index_select.default"):
        assert report.tiles_per_op[op] > 2, op


@pytest.mark.parametrize("x1_shape,x2_shape", [((2, 7, 3), (2, 5, 3)), ((60, 4), (20, 4)), ((3, 1, 9, 4), (2, 30, 4))])
def test_cdist(x1_shape, x2_shape):
    """p = 1, 2 and inf distances, batched and broadcast over batches: tiles cut the batch and
    x1's rows. (Past 25 rows, p = 2 reaches aspen as matmuls.)"""
    class Model(nn.Module):
        def forward(self, x1, x2):
            return torch.cdist(x1 * 1, x2), torch.cdist(x1, x2, p=1), torch.cdist(x1, x2, p=float("inf"))

    report = assert_matches_eager(Model(), torch.randn(x1_shape), torch.randn(x2_shape),
                                  options={"min_tile_flops": 1, "tiles_per_dse": 3})
    assert report.tiles_per_op["aten._cdist_forward.default"] > 4


def test_unfold_windows_and_patches():
    """Sliding windows with overlap (step < size), gaps (step > size) and a dropped tail, and
    ViT-style patch extraction (unfold twice, then permute and reshape): copies of eager's
    overlapping views, each tile reading the input span of its windows. Returned as they are,
    windows alias their source as eager's views do (of the input, of another output)."""
    class Model(nn.Module):
        def forward(self, x, img):
            patches = img.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(2, -1, 48)
            y = x * 2
            return x.unfold(1, 3, 2), y, y.unfold(-1, 2, 3), x.unfold(1, 4, 3) + 1, patches * 1

    report = assert_matches_eager(Model(), torch.randn(3, 11, 8), torch.randn(2, 3, 8, 12),
                                  options={"min_tile_flops": 1, "tiles_per_dse": 3})
    assert report.tiles_per_op["aten.unfold.default"] > 6


def test_diagonals_and_diagonal_matrices():
    """Diagonals above, on and below the main one, of a batch with the dims in either order
    and one past the matrix (empty); diag_embed at the end and at other dims; torch.diag of
    a vector. Copies of eager's views, tiles cutting the diagonal and the other dims."""
    class Model(nn.Module):
        def forward(self, x, v):
            y = x * 2
            return (torch.diagonal(y, 2, 1, 2), torch.diagonal(y, -1, 2, 1) + 1, torch.diagonal(y, 0, 0, 2),
                    torch.diagonal(y, 9, 1, 2), torch.diag_embed(v * 2), torch.diag_embed(v, 1, 0, 2) + 1,
                    torch.diag(v[0]) * 3)

    report = assert_matches_eager(Model(), torch.randn(3, 7, 6), torch.randn(2, 5),
                                  options={"min_tile_flops": 1, "tiles_per_dse": 3})
    assert report.tiles_per_op["aten.diagonal.default"] > 6 and report.tiles_per_op["aten.diag_embed.default"] > 2


@pytest.mark.parametrize("batch", [(5,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_bilinear(batch, bias):
    """nn.Bilinear (aten._trilinear): tiles cut the batch and the output features, each
    reading its rows of both inputs and its slice of the weight."""
    model = nn.Bilinear(6, 4, 9, bias=bias).eval()
    report = assert_matches_eager(model, torch.randn(*batch, 6), torch.randn(*batch, 4),
                                  options={"min_tile_flops": 1, "tiles_per_dse": 3})
    assert report.tiles_per_op["aten._trilinear.default"] > 4


def test_transformers_grouped_mm_of_moe_experts():
    """transformers' MoE expert product (its custom op for fp32 under torch.compile): rows
    grouped by expert, some experts with no rows; tiles cut the output columns, an operand
    whose strides ATen's grouped mm refuses is copied. Offsets not
    ending at the row count (rows no expert owns) fail that call, and the model stays usable."""
    pytest.importorskip("transformers.integrations.moe")
    grouped_mm = torch.ops.transformers.grouped_mm_fallback

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 200, 24))  # [experts, N, K], used transposed

        def forward(self, x, offs):  # x as a transposed view: strides of 40 bytes, copied for ATen
            return grouped_mm((x * 2).t(), self.weight.transpose(1, 2), offs) + 1

    model = Experts().eval()
    x = torch.randn(24, 10)
    offs = torch.tensor([3, 3, 8, 10], dtype=torch.int32)
    report = assert_matches_eager(model, x, offs, options={"min_tile_flops": 1, "tiles_per_dse": 3})
    assert report.tiles_per_op["transformers.grouped_mm_fallback.default"] > 2
    compiled = compile_strict(model)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="grouped mm offsets must end at the 10 rows"):
            compiled(x, torch.tensor([3, 3, 8, 9], dtype=torch.int32))
        other = torch.tensor([0, 6, 6, 10], dtype=torch.int32)
        torch.testing.assert_close(compiled(x, other), model(x, other), rtol=1e-4, atol=1e-4)
