"""Transformer rules vs eager: embedding, layer norm, softmax, bmm, masks, SDPA, MHA, GPT-style blocks."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_eager, compile_strict

from aspen_torch.apu.tile_graph import TileKind
from aspen_torch.models import GPTBlock

MANY_TILES = {"min_tile_flops": 1e3, "tiles_per_dse": 3}


def test_embedding_and_layer_norm():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 24, padding_idx=0)
            self.ln = nn.LayerNorm(24)

        def forward(self, ids):
            return self.ln(self.emb(ids) * 2)

    assert_matches_eager(Model().eval(), torch.randint(0, 50, (3, 17)), options=MANY_TILES)


def test_token_id_out_of_range_raises_eagers_index_error():
    """A tile's c10 error reaches the caller as the Python class eager raises (IndexError
    here, which a caller may catch), naming the tile; the compiled model stays usable."""
    model = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 16)).eval()
    compiled = compile_strict(model)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), model(ids), rtol=1e-4, atol=1e-4)
        with pytest.raises(IndexError, match=r"aspen: tile \d+ \(embedding .*\) failed: index out of range"):
            compiled(torch.tensor([[1, 2, 30]]))
        torch.testing.assert_close(compiled(ids), model(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dim", [-1, 1])
def test_softmax_and_log_softmax(dim):
    class Model(nn.Module):
        def forward(self, x):
            return F.softmax(x * 3, dim=dim), F.log_softmax(x + 1, dim=dim)

    assert_matches_eager(Model(), torch.randn(2, 5, 7, 9), options=MANY_TILES)


def test_bmm_and_matmul_with_leading_dims():
    class Model(nn.Module):
        def forward(self, a, b, c):
            return torch.bmm(a, b) + 1, torch.matmul(c, b[0])

    assert_matches_eager(Model(), torch.randn(6, 11, 8), torch.randn(6, 8, 13), torch.randn(2, 3, 5, 8),
                         options=MANY_TILES)


@pytest.mark.parametrize("tiles_per_dse", [1, 3])
def test_attention_mask_add_runs_in_the_score_tiles(tiles_per_dse):
    """Scores written as [batch x heads, q, k] and viewed as [batch, heads, q, k], plus a
    [batch, 1, q, k] mask expanded over heads: the mask has no view in the tiles' shape, so
    the add runs as an epilogue on the output viewed in the scores' shape."""
    class Model(nn.Module):
        def forward(self, q, k, mask):
            scores = torch.bmm(q, k).view(2, 3, 13, 11)
            return F.softmax(scores + mask, dim=-1)

    mask = torch.randn(2, 1, 13, 11)
    options = {"min_tile_flops": 1e3, "tiles_per_dse": tiles_per_dse}
    report = assert_matches_eager(Model(), torch.randn(6, 13, 8), torch.randn(6, 8, 11), mask, options=options)
    assert "aten.add.Tensor" not in report.tiles_per_op
    assert report.tiles_per_op["aten.bmm.default"] > 1


def test_masks_of_other_dtypes():
    class Model(nn.Module):
        def forward(self, x, mask):
            keep = (mask > 0) & ~(x.sum(-1, keepdim=True) > 100)
            y = x.masked_fill(~keep, float("-inf"))
            return torch.where(keep, F.softmax(y, dim=-1), torch.zeros_like(y)), mask.to(torch.float32) * 2

    mask = torch.randint(0, 2, (3, 1, 9), dtype=torch.int64)
    assert_matches_eager(Model(), torch.randn(3, 4, 9), mask, options=MANY_TILES)


@pytest.mark.parametrize("reduce", [
    lambda x: x.sum((0, 2)), lambda x: x.amax(-1, keepdim=True), lambda x: x.amin((1, 2)),
    lambda x: x.argmax(-1), lambda x: x.argmin(1, keepdim=True), lambda x: x.argmax(),
    lambda x: (x > 0).any(-1), lambda x: (x > -2).all(1), lambda x: x.max(-1), lambda x: x.min(1, keepdim=True),
    lambda x: x.max(), lambda x: x.min(), lambda x: x.norm(dim=-1), lambda x: F.normalize(x, dim=-1),
    lambda x: torch.linalg.vector_norm(x, 1, (0, 2)), lambda x: x.var(-1), lambda x: x.std(1, keepdim=True),
    lambda x: x.var(), lambda x: torch.logsumexp(x, -1), lambda x: x.prod(1), lambda x: x.median(-1),
    lambda x: x.median(), lambda x: x.nanmedian(1, keepdim=True), lambda x: x.nanmedian(),
    lambda x: x.kthvalue(3, 1), lambda x: x.round().mode(-1), lambda x: x.round().mode(0),
    lambda x: torch.var_mean(x, -1), lambda x: torch.std_mean(x, (0, 2), correction=0, keepdim=True),
    lambda x: (x > 0).any(), lambda x: (x > -3).all(), lambda x: (x > -1).all((0, 2)), lambda x: x.sum(),
    lambda x: x.prod(), lambda x: x.nansum(-1), lambda x: torch.count_nonzero(x > 0),
    lambda x: torch.count_nonzero(x > 0, (0, 2)), lambda x: torch.trace(x[1]), lambda x: torch.histc(x, 7, -1, 1),
    lambda x: x.sum(-1, dtype=torch.float32), lambda x: (x > 0).sum(1, dtype=torch.int32)])
@pytest.mark.parametrize("with_nan", [False, True])
def test_reductions(reduce, with_nan):
    """Mask plumbing and pooling (CLIP's text model picks its pooled token by argmax),
    max / min / median / kthvalue / mode with their indices (mode with ties), norms,
    variances and var_mean / std_mean's two statistics, sums with a result dtype; NaN
    propagates (or, for nanmedian, is skipped) as in eager."""
    class Model(nn.Module):
        def forward(self, x):
            return reduce(x * 2)

    x = torch.randn(6, 5, 9)
    if with_nan:
        x[2, 3, 4] = float("nan")
    report = assert_matches_eager(Model(), x, options={"min_tile_flops": 1})
    assert report.num_tiles > 1


@pytest.mark.parametrize("op", [
    lambda x: x.softmax(0), lambda x: x.log_softmax(-1), lambda x: torch.ops.aten._safe_softmax(x, 0),
    lambda x: x.mean(0), lambda x: x.mean(-1, keepdim=True), lambda x: x.sum(0), lambda x: x.amax(-1),
    lambda x: x.var(0, correction=0), lambda x: x.cumsum(0), lambda x: x.sort(-1), lambda x: x.max(0),
    lambda x: x.flip(0), lambda x: x.index_select(0, torch.zeros(1, dtype=torch.long))])
def test_dims_of_a_0d_tensor(op):
    """A 0-d tensor takes dim 0 and -1 as if it had one dim (a scalar loss or score)."""
    class Model(nn.Module):
        def forward(self, x):
            return op(x * 2)

    assert_matches_eager(Model(), torch.tensor(-1.5))


def test_histogram_over_the_data_range():
    """histc with min = max = 0 bins over the data's own range: one tile sees all of it."""
    class Model(nn.Module):
        def forward(self, x):
            return torch.histc(x * 2, 6) + 1

    report = assert_matches_eager(Model(), torch.randn(40, 3), options={"min_tile_flops": 1})
    assert report.tiles_per_op["aten.histc.default"] == 1


def test_scans_along_any_dim():
    """cumprod, logcumsumexp, cummax and cummin (values and indices; ties and NaN as in
    eager): tiles over the other dims, each whole along the scanned one."""
    class Model(nn.Module):
        def forward(self, x):
            return (torch.cumprod(x, 1), torch.logcumsumexp(x * 3, 2), torch.cummax(x, 0), torch.cummin(x, -1),
                    torch.cumsum(x.gt(0), 2))

    x = torch.randint(-2, 3, (5, 6, 7)).float() / 2
    x[1, 2, 3] = float("nan")
    report = assert_matches_eager(Model(), x, options={"min_tile_flops": 1})
    for op in ("aten.cumprod.default", "aten.logcumsumexp.default", "aten.cummax.default", "aten.cummin.default"):
        assert report.tiles_per_op[op] >= 2, op


def test_pointwise_after_values_leaves_indices_alone():
    """An elementwise op on the values of a values-and-indices op runs as an epilogue of
    the values' tiles only (it was appended to the indices' tiles too, which then failed)."""
    class Model(nn.Module):
        def forward(self, x):
            top = torch.max(x, 1)
            return top.values + 1, top.indices * 2, torch.sort(x, 0).values * 3, torch.cummax(x, 2)[0].relu()

    report = assert_matches_eager(Model(), torch.randn(4, 6, 9), options={"min_tile_flops": 1})
    assert report.num_tiles > 4


@pytest.mark.parametrize("with_nan", [False, True])
def test_topk_and_sort(with_nan):
    """Values and indices, along the last and the first dim, sorted and not, with ties
    (small integers) broken as in eager."""
    class Model(nn.Module):
        def forward(self, x):
            return (torch.topk(x * 2, 5), torch.topk(x, 3, dim=0, largest=False, sorted=False), x.sort(-1),
                    torch.sort(x, dim=0, descending=True, stable=True), x.argsort(1))

    x = torch.randint(0, 3, (4, 7, 40)).float()
    if with_nan:
        x[1, 2, 3] = float("nan")
    report = assert_matches_eager(Model(), x, options={"min_tile_flops": 1})
    assert report.tiles_per_op["aten.topk.default"] > 2 and report.tiles_per_op["aten.sort.default"] > 2


def test_position_ids_from_padding_mask():
    """RoBERTa's position ids: a cumulative sum over the non-padding tokens, and a gather."""
    class Model(nn.Module):
        def forward(self, ids, table, index):
            mask = ids.ne(1).int()
            positions = (torch.cumsum(mask, dim=1).type_as(mask) + 0) * mask
            return positions.long() + 1, torch.gather(table * 2, 1, index)

    ids, index = torch.randint(0, 4, (3, 17)), torch.randint(0, 40, (64, 30))
    report = assert_matches_eager(Model(), ids, torch.randn(70, 40), index, options={"min_tile_flops": 1})
    assert report.tiles_per_op["aten.cumsum.default"] > 1 and report.tiles_per_op["aten.gather.default"] > 1


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_scaled_dot_product_attention(causal, with_mask):
    class Model(nn.Module):
        def forward(self, q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask if with_mask else None,
                                                  is_causal=causal and not with_mask)

    q, k, v = torch.randn(2, 3, 13, 16), torch.randn(2, 3, 13, 16), torch.randn(2, 3, 13, 16)
    mask = torch.randn(13, 13)
    assert_matches_eager(Model(), q, k, v, mask, options=MANY_TILES)


def test_safe_softmax_zeroes_fully_masked_rows_only():
    """SDPA that the fused kernel does not take (value head size differs from the query's)
    runs its math form, with aten._safe_softmax as one tile kind: rows masked throughout
    give zeros (not NaN), and a NaN in a live row still propagates as in eager."""
    class Model(nn.Module):
        def forward(self, q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = torch.randn(2, 3, 13, 16), torch.randn(2, 3, 13, 16), torch.randn(2, 3, 13, 12)
    mask = torch.rand(2, 1, 13, 13) > 0.3
    mask[0, :, 4] = False  # query row 4 of batch 0 sees nothing
    mask[1, :, :, :] = False  # batch 1 sees nothing at all
    q[0, 1, 7, 3] = float("nan")
    report = assert_matches_eager(Model(), q, k, v, mask, options=MANY_TILES, rtol=1e-4, atol=1e-5)
    assert report.tiles_per_op.get("aten._safe_softmax.default", 0) > 1
    assert not {"aten.eq.Scalar", "aten.all.dim", "aten.full_like.default"} & set(report.tiles_per_op)


FLASH = "aten._scaled_dot_product_flash_attention_for_cpu.default"


@pytest.mark.parametrize("mask_kind", ["none", "float 2-d", "float per batch", "bool, rows fully masked"])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_tiles(mask_kind, causal):
    """SDPA runs as fused-attention tiles, cut over batch, heads and (unless causal) query
    rows; Q/K/V are read through the strides of a projection's [batch, seq, heads, dim]
    layout and the output is laid out the same way."""
    class Model(nn.Module):
        def forward(self, x, mask):
            q, k, v = (x * 0.5).view(2, 13, 3, 3, 16).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
            return out.transpose(1, 2).reshape(2, 13, 48) + 1

    masks = {"none": None, "float 2-d": torch.randn(13, 13), "float per batch": torch.randn(2, 1, 13, 13)}
    mask = masks.get(mask_kind)
    if mask_kind.startswith("bool"):
        mask = torch.rand(2, 1, 13, 13) > 0.3
        mask[0, :, 4] = False
        mask[1] = False
    options = {"min_tile_flops": 1e3, "tiles_per_dse": 8}  # 16 tiles wanted, 6 (batch, head) pairs
    report = assert_matches_eager(Model(), torch.randn(2, 13, 144), mask, options=options, atol=1e-5)
    if causal and mask is None:
        assert report.tiles_per_op[FLASH] == 6
    else:
        assert report.tiles_per_op[FLASH] > 6, "query rows are cut too"
    assert not {"aten.bmm.default", "aten.clone.default", "aten._unsafe_view.default"} & set(report.tiles_per_op)


@pytest.mark.parametrize("head_dim,keys,mask_shape,scale", [
    (64, 128, (2, 1, 1, 128), None), (80, 130, (2, 4, 9, 130), 0.3), (16, 7, None, None), (96, 33, (9, 33), 2.0),
    (24, 20, (2, 1, 1, 20), None)])
@pytest.mark.parametrize("nan", ["none", "query row", "key row"])
def test_attention_kernel_edges(head_dim, keys, mask_shape, scale, nan):
    """Attention tiles (aspen's AVX-512 kernel where the CPU has it, for head dims that are
    multiples of 16; ATen's kernel for 24): head dims of 1 to 6 vectors, key counts off the
    16-float vector and the 64-key block, masks per batch, per head and per query, a given
    scale, and NaNs in a query row or a key row, with eager's results (ATen's kernel drops a
    NaN among the last keys % 16 from a row's max, so a row of only such NaNs gives zeros).
    Masked keys (-inf, transformers' float32 min) and scores far below the row's max, whose
    exponentials are denormal or 0 (the kernel makes them 0), weigh nothing."""
    class Model(nn.Module):
        def forward(self, q, k, v, mask):
            return F.scaled_dot_product_attention(q * 1, k * 1, v * 1, attn_mask=mask, scale=scale)

    q = torch.randn(2, 4, 9, head_dim)
    k, v = torch.randn(2, 4, keys, head_dim), torch.randn(2, 4, keys, head_dim)
    if nan == "query row":
        q[1, 2, 5, 3] = float("nan")
    elif nan == "key row":
        k[0, 1, keys - 1, 0] = float("nan")
    mask = torch.randn(mask_shape) if mask_shape is not None else None
    if mask is not None:
        mask[..., 0] = float("-inf")  # a masked key: exactly zero weight
        mask[..., 1] = torch.finfo(torch.float32).min
        mask[..., 2:4] = torch.tensor([-90.0, -84.0])
    report = assert_matches_eager(Model(), q, k, v, mask, options={"min_tile_flops": 1e3, "tiles_per_dse": 4})
    assert report.tiles_per_op[FLASH] > 1


@pytest.mark.parametrize("seq", [37, 130])
@pytest.mark.parametrize("nan", ["none", "key of the last position", "value of the last position"])
def test_causal_attention_kernel_edges(seq, nan):
    """Causal attention tiles: a NaN in the last key is masked for every earlier query (its
    score is replaced by -inf), a NaN in the last value reaches every row through its zero
    weight (0 x NaN), as in eager."""
    class Model(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q * 1, k * 1, v * 1, is_causal=True)

    q, k, v = (torch.randn(1, 4, seq, 64) for _ in range(3))
    if nan == "key of the last position":
        k[0, 1, seq - 1, 5] = float("nan")
    elif nan == "value of the last position":
        v[0, 2, seq - 1, 7] = float("nan")
    report = assert_matches_eager(Model(), q, k, v, options={"min_tile_flops": 1e3, "tiles_per_dse": 2})
    assert report.tiles_per_op[FLASH] > 1


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_with_fewer_queries_than_keys(causal):
    """Cross-attention shapes: 7 queries over 13 keys, a [queries, keys] mask when not causal."""
    class Model(nn.Module):
        def forward(self, x, memory, mask):
            q = (x * 0.5).view(2, 7, 3, 16).transpose(1, 2)
            k, v = (memory + 1).view(2, 13, 2, 3, 16).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal)
            return out.transpose(1, 2).reshape(2, 7, 48)

    options = {"min_tile_flops": 1e3, "tiles_per_dse": 8}
    report = assert_matches_eager(Model(), torch.randn(2, 7, 48), torch.randn(2, 13, 96), torch.randn(7, 13),
                                  options=options, atol=1e-5)
    tiles = report.tiles_per_op[FLASH]
    assert (tiles == 6) if causal else (tiles > 6), "causal tiles keep every query; others cut query rows"


def test_fused_attention_copies_operands_without_dense_rows():
    """ATen's kernel reads every dimension but the last through strides, and the last as
    dense: 4-d inputs, which aspen keeps channels-last, are copied first."""
    class Model(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 3, 13, 16), torch.randn(2, 3, 13, 16), torch.randn(2, 3, 13, 16)
    report = assert_matches_eager(Model(), q, k, v, options=MANY_TILES)
    assert report.tiles_per_op[FLASH] > 1


@pytest.mark.parametrize("batch,heads,kv_heads,causal,tiles_per_dse", [
    (2, 8, 2, False, 8), (1, 8, 2, True, 3), (1, 8, 4, True, 3), (1, 8, 1, True, 2), (2, 8, 1, False, 8),
    (1, 10, 2, True, 2)])
def test_fused_attention_with_grouped_key_value_heads(batch, heads, kv_heads, causal, tiles_per_dse):
    """Grouped-query attention (LLaMA): query heads over fewer key/value heads. The kernel
    maps a tile's local query head i to local K/V head i // (its query heads / its K/V
    heads); tiles must be cut so that this is the global mapping h -> h // group (with 2
    DSEs, cutting 10 heads into 4 even ranges would give a tile heads 3-5 over K/V 0-1)."""
    class Model(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q * 0.5, k + 0, v + 0, is_causal=causal, enable_gqa=True)

    q = torch.randn(batch, 11, heads, 16).transpose(1, 2)  # [batch, seq, heads, dim] in memory, as projections give
    k, v = (torch.randn(batch, 11, kv_heads, 16).transpose(1, 2) for _ in range(2))
    options = {"min_tile_flops": 1e3, "tiles_per_dse": tiles_per_dse}
    report = assert_matches_eager(Model(), q, k, v, options=options, atol=1e-5)
    group = heads // kv_heads
    tiles = [t for t in report.tile_graphs[0].tiles if t.kind == TileKind.ATTENTION]
    assert len(tiles) > 1
    for tile in tiles:
        (h0, h1), (k0, k1) = tile.out.box[1], tile.inputs[1].box[1]
        local_group = (h1 - h0) // (k1 - k0)
        assert (h1 - h0) % (k1 - k0) == 0
        assert all((h0 + i) // group - k0 == i // local_group for i in range(h1 - h0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention(batch_first):
    model = nn.MultiheadAttention(64, 4, batch_first=batch_first).eval()
    x = torch.randn(2, 11, 64) if batch_first else torch.randn(11, 2, 64)
    padding = torch.zeros(2, 11, dtype=torch.bool)
    padding[1, 7:] = True

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = model

        def forward(self, x):
            return self.mha(x, x, x, key_padding_mask=padding, need_weights=False)[0]

    assert_matches_eager(Model().eval(), x, options=MANY_TILES)


@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("seq", [1, 19, 32])
def test_gpt_block(use_sdpa, seq):
    assert_matches_eager(GPTBlock(use_sdpa=use_sdpa).eval(), torch.randn(2, seq, 64), options=MANY_TILES)
