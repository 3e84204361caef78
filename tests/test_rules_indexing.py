"""Indexing rules vs eager: scatter, index_put, one_hot's checks, EmbeddingBag, bucketize,
grid sampling and max pooling with its indices (the rules in apu/rules/indexing.py and
conv_pool.py's pooling)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_eager, compile_strict

MANY_TILES = {"min_tile_flops": 1, "tiles_per_dse": 3}


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@pytest.mark.parametrize("scatter", [
    lambda x, d, i, s: torch.scatter(x, d, i, s),
    lambda x, d, i, s: torch.scatter(x, d, i, 2.5),
    lambda x, d, i, s: torch.scatter(x, d, i, s, reduce="multiply"),
    lambda x, d, i, s: torch.scatter(x, d, i, 0.5, reduce="add"),
    lambda x, d, i, s: torch.scatter_add(x, d, i, s),
    lambda x, d, i, s: torch.scatter_reduce(x, d, i, s, "amax", include_self=False),
    lambda x, d, i, s: torch.scatter_reduce(x, d, i, s, "mean"),
])
@pytest.mark.parametrize("dim", [0, 1])
def test_scatter_family_cuts_the_dims_off_the_scattered_one(scatter, dim):
    """Index [6, 3] into x [6, 9] along dim 1, or the transposes along dim 0 (repeated
    positions: reductions meet several sources): tiles cut the 6 rows (columns), each
    reading its part of x, index and src whole along the scattered dim."""
    x, src = torch.randn(6, 9), torch.randn(6, 4)
    index = torch.tensor([[0, 4, 4], [8, 1, 0], [2, 2, 2], [5, 6, 7], [3, 3, 8], [1, 0, 1]])
    if dim == 0:
        x, src, index = x.t().contiguous(), src.t().contiguous(), index.t().contiguous()
    report = assert_matches_eager(Fn(lambda x, i, s: scatter(x * 2, dim, i, s) + 1), x, index, src,
                                  options=MANY_TILES)
    assert max(n for op, n in report.tiles_per_op.items() if "scatter" in op) > 2


def test_scatter_with_an_index_shorter_off_its_dim():
    """An index shorter than x off the scatter dim (rows 0-1 of 4) leaves the other rows as
    they were: tiles past the index's extent read an empty index and copy x."""
    x, src = torch.randn(4, 5, 6), torch.randn(3, 5, 7)
    index = torch.randint(0, 6, (2, 5, 2))
    report = assert_matches_eager(Fn(lambda x, i, s: torch.scatter_add(x, 2, i, s) * 2), x, index, src,
                                  options=MANY_TILES)
    assert report.tiles_per_op["aten.scatter_add.default"] > 3


def test_scatter_of_an_index_out_of_range_fails_that_call_only():
    model = Fn(lambda x, i: torch.scatter(x, 1, i, 1.0) + 1)
    compiled = compile_strict(model)
    x, good = torch.randn(2, 8), torch.tensor([[1], [2]])
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"scatter.*index 9 is out of bounds for dimension 1 with size 8"):
            compiled(x, torch.tensor([[1], [9]]))
        torch.testing.assert_close(compiled(x, good), model(x, good))


def _masked_writes(x, y):
    out = x * 2
    out[x > 0.5] = 0.0
    out[y.abs() < 0.3] += 3.0
    return out


def test_index_put_of_a_boolean_mask_and_one_value_is_cut_anywhere():
    """`y[mask] = v` and `y[mask] += v` are elementwise: many tiles, each masking its box."""
    report = assert_matches_eager(Fn(_masked_writes), torch.randn(5, 7, 6), torch.randn(5, 7, 6),
                                  options=MANY_TILES)
    assert report.tiles_per_op["aten.index_put.default"] > 4


def _indexed_writes(x, rows, cols, values):
    out = x * 1
    out[rows] = values            # whole rows at integer positions
    out[:, cols] = -1.0           # an index behind a full slice (a None index)
    out[rows, cols[:3]] += 10.0   # pairs of indices, accumulated
    out[out[:, 0] > 0] = 7.0      # a mask over the leading dim only
    return out


def test_index_put_of_integer_indices_and_partial_masks():
    """Integer indices can send a value anywhere, so those writes are one tile each;
    accumulation over a repeated position matches eager's."""
    x = torch.randn(8, 5)
    rows, cols = torch.tensor([1, 6, 1]), torch.tensor([4, 0, 2, 3])
    assert_matches_eager(Fn(_indexed_writes), x, rows, cols, torch.randn(5), options=MANY_TILES)


def test_index_add_and_fold_accumulate_through_index_put():
    """index_add_ and F.fold (col2im) reach aspen as index_put with accumulate=True."""
    def model(src, index, cols):
        out = torch.zeros(8, 6)
        out.index_add_(0, index, src)
        return out, F.fold(cols, (5, 6), 2, stride=1, padding=1)

    assert_matches_eager(Fn(model), torch.randn(5, 6), torch.tensor([0, 2, 2, 7, 1]), torch.randn(2, 12, 42),
                         options=MANY_TILES)


def test_index_put_of_an_index_out_of_range_raises_eagers_index_error():
    def write(x, rows):
        out = x.clone()
        out[rows] = 1.0
        return out + 1

    model, x = Fn(write), torch.randn(8, 3)
    compiled = compile_strict(model)
    with torch.no_grad():
        with pytest.raises(IndexError, match=r"index_put.*index 12 is out of bounds for dimension 0 with size 8"):
            compiled(x, torch.tensor([1, 12]))
        torch.testing.assert_close(compiled(x, torch.tensor([1, 2])), model(x, torch.tensor([1, 2])))


def test_one_hot_and_its_range_checks():
    """F.one_hot checks its class ids with _assert_async: a check tile raises the op's own
    message for an id out of range, and the compiled model stays usable."""
    model = Fn(lambda ids: F.one_hot(ids, 8).float() * 2)
    ids = torch.randint(0, 8, (4, 5))
    report = assert_matches_eager(model, ids, options=MANY_TILES)
    assert report.tiles_per_op["aten._assert_async.msg"] == 2
    compiled = compile_strict(model)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="one_hot: Class values must be smaller than num_classes"):
            compiled(torch.tensor([[1, 8]]))
        with pytest.raises(RuntimeError, match="one_hot: Class values must be non-negative"):
            compiled(torch.tensor([[-1, 2]]))
        torch.testing.assert_close(compiled(ids), model(ids))


class BagWithOffsets(nn.Module):
    """Bags of 0, 3, 0, 0, 4, 2 and 3 indices (empty bags at tile boundaries)."""

    def __init__(self, mode: str, include_last_offset: bool):
        super().__init__()
        self.bag = nn.EmbeddingBag(30, 5, mode=mode, include_last_offset=include_last_offset)
        self.register_buffer("offsets", torch.tensor([0, 0, 3, 3, 3, 7, 9] + ([12] if include_last_offset else [])))

    def forward(self, indices, weights=None):
        return self.bag(indices, self.offsets, per_sample_weights=weights) * 2


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_embedding_bag_with_offsets_known_at_compile_time_is_cut_by_bags(mode, include_last_offset):
    indices = torch.randint(0, 30, (12,))
    inputs = (indices, torch.rand(12)) if mode == "sum" else (indices,)
    report = assert_matches_eager(BagWithOffsets(mode, include_last_offset).eval(), *inputs, options=MANY_TILES)
    assert report.tiles_per_op["aten._embedding_bag.default"] > 2


def test_embedding_bag_of_a_2d_input_and_of_run_time_offsets():
    """A 2-d input is bags of its rows (offsets folded at compile time: cut by bags);
    offsets passed at run time make one tile."""
    report = assert_matches_eager(nn.EmbeddingBag(30, 5).eval(), torch.randint(0, 30, (7, 4)), options=MANY_TILES)
    assert report.tiles_per_op["aten._embedding_bag.default"] > 2
    bag = nn.EmbeddingBag(30, 5, mode="sum").eval()
    report = assert_matches_eager(Fn(lambda i, o: bag(i, o)), torch.randint(0, 30, (10,)), torch.tensor([0, 4, 4, 8]),
                                  options=MANY_TILES)
    assert report.tiles_per_op["aten._embedding_bag.default"] == 1


def test_embedding_bag_offsets_that_aten_would_reject_are_named_at_compile_time():
    """ATen checks offsets only on its multithreaded path; a tile runs on one thread and would
    return zeros for decreasing offsets, so constant offsets are checked when compiling."""
    bag = BagWithOffsets("mean", False).eval()
    bag.offsets = torch.tensor([0, 3, 1])
    with pytest.raises(Exception, match=r"EmbeddingBag offsets must .* never decrease .*got \[0, 3, 1\]"), \
            torch.no_grad():
        compile_strict(bag)(torch.randint(0, 30, (6,)))


def test_embedding_bag_run_time_offsets_that_decrease_fail_that_call_only():
    """Run-time offsets are checked by tiles before the bag (ATen checks their order only
    multithreaded); start and end are ATen's own checks. Each bad call raises, good ones
    after it still answer as eager does."""
    bag = nn.EmbeddingBag(30, 5, mode="sum").eval()
    compiled = compile_strict(Fn(lambda i, o: bag(i, o)))
    ids = torch.randint(0, 30, (10,))
    with torch.no_grad():
        for offsets, message in [([0, 6, 4, 8], "offsets must never decrease"), ([2, 4, 8], "offsets\\[0\\] has to be 0"),
                                 ([0, 4, 11], "can not be greater than input's length")]:
            with pytest.raises(RuntimeError, match=message):
                compiled(ids, torch.tensor(offsets))
            good = torch.tensor([0, 3, 3, 9])
            torch.testing.assert_close(compiled(ids, good), bag(ids, good), rtol=1e-5, atol=1e-5)


def test_masked_scatter_places_image_features_into_token_embeddings():
    """A multimodal model's merge: masked positions take the source's rows in order (one tile:
    each position's source row counts the mask before it)."""
    class Model(nn.Module):
        def forward(self, embeds, ids, features):
            mask = (ids == 7).unsqueeze(-1).expand_as(embeds)
            return embeds.masked_scatter(mask, features * 2) + 1

    ids = torch.tensor([[1, 7, 7, 2, 3], [7, 4, 7, 7, 5]])
    report = assert_matches_eager(Model(), torch.randn(2, 5, 4), ids, torch.randn(5, 4), options=MANY_TILES)
    assert report.tiles_per_op["aten.masked_scatter.default"] == 1


@pytest.mark.parametrize("right", [False, True])
def test_bucketize(right):
    boundaries = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    x = torch.tensor([-1.0, 0.0, 0.25, 3.0]).repeat(3, 2)  # values on the boundaries too
    report = assert_matches_eager(Fn(lambda x, b: torch.bucketize(x * 1, b, right=right)), x, boundaries,
                                  options=MANY_TILES)
    assert report.tiles_per_op["aten.bucketize.Tensor"] > 2


@pytest.mark.parametrize("side", ["left", "right"])
def test_searchsorted_of_one_and_of_many_sequences(side):
    """A 1-d sorted sequence serves every value; a [4, 6] one holds a sequence per row of the
    [4, 9] values (tiles read their rows of it); an unsorted sequence with its sorter."""
    def model(seq, rows, unsorted, x):
        return (torch.searchsorted(seq, x * 1, side=side), torch.searchsorted(rows, x, side=side),
                torch.searchsorted(unsorted, x, side=side, sorter=torch.argsort(unsorted)))

    seq = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    rows = torch.randn(4, 6).sort(-1).values
    x = torch.cat([torch.randn(4, 7), rows[:, :2]], 1)  # some values equal to entries
    report = assert_matches_eager(Fn(model), seq, rows, torch.randn(5), x, options=MANY_TILES)
    assert report.tiles_per_op["aten.searchsorted.Tensor"] > 6


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample(mode, padding_mode, align_corners):
    """A grid reaching outside the image: tiles cut images, channels and output rows."""
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    model = Fn(lambda x, g: F.grid_sample(conv(x), g, mode, padding_mode, align_corners))
    report = assert_matches_eager(model, torch.randn(2, 3, 7, 9), torch.rand(2, 5, 6, 2) * 2.4 - 1.2,
                                  options=MANY_TILES)
    assert report.tiles_per_op["aten.grid_sampler_2d.default"] > 2


def test_max_pool_indices_feed_max_unpool():
    """SegNet's decoder: pooling whose indices are used runs over whole planes (an index
    counts from its plane's start), values and indices each by their own tiles."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            pooled, indices = F.max_pool2d(self.conv(x), 2, return_indices=True)
            return F.max_unpool2d(pooled * 2, indices, 2), indices

    report = assert_matches_eager(Model().eval(), torch.randn(2, 3, 8, 10), options=MANY_TILES)
    assert report.tiles_per_op["aten.max_pool2d_with_indices.default"] > 2
