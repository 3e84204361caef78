"""PyTorch's fused inference fast paths, decomposed at capture (fast_paths.py): the
decomposition against ATen's fused op, and nn.TransformerEncoderLayer compiled strictly."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import assert_matches_eager

from aspen_torch.fast_paths import FAST_PATH_DECOMPOSITIONS

aten = torch.ops.aten
BATCH, LENGTH, EMBED, HEADS = 3, 7, 16, 4


def encoder_layer(norm_first: bool, activation: str, embed: int = EMBED, heads: int = HEADS) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(embed, heads, 2 * embed, dropout=0.0, activation=activation,
                                       batch_first=True, norm_first=norm_first).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)  # norms' weights away from 1, biases away from 0
    return layer


def fused_args(layer: nn.TransformerEncoderLayer, use_gelu: bool) -> list:
    """The arguments after `src` that nn.TransformerEncoderLayer passes the fused op."""
    attn = layer.self_attn
    return [attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
            attn.out_proj.bias, use_gelu, layer.norm_first, layer.norm1.eps, layer.norm1.weight, layer.norm1.bias,
            layer.norm2.weight, layer.norm2.bias, layer.linear1.weight, layer.linear1.bias, layer.linear2.weight,
            layer.linear2.bias]


def masks() -> dict[str, tuple]:
    """(mask, mask_type) as ATen's masked softmax takes them; batch 1 of the padding hides every key."""
    padding = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    padding[0, 5:] = True
    padding[1] = True
    causal = torch.triu(torch.ones(LENGTH, LENGTH, dtype=torch.bool), 1)
    scores = torch.zeros(BATCH, HEADS, LENGTH, LENGTH)
    scores[..., 2] = float("-inf")
    scores[0, 0, 0, 1] = 0.5  # any nonzero entry hides its key, not only -inf
    scores[2, 1, 3] = float("-inf")  # one head of one query hides every key: the query's row is NaN
    return {"none": (None, None), "padding": (padding, 1), "padding as -1e9": (padding.float() * -1e9, 1),
            "causal": (causal, 0), "per head": (scores, 2), "per head, no type": (scores, None)}


@pytest.mark.parametrize("mask_name", list(masks()))
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("use_gelu", [False, True])
def test_encoder_layer_decomposition_matches_the_fused_op(mask_name, norm_first, use_gelu):
    """Values within float rounding, and NaN exactly where the fused op gives NaN (a query
    whose keys are all hidden)."""
    layer = encoder_layer(norm_first, "gelu" if use_gelu else "relu")
    mask, mask_type = masks()[mask_name]
    x = torch.randn(BATCH, LENGTH, EMBED)
    decomposed = FAST_PATH_DECOMPOSITIONS[aten._transformer_encoder_layer_fwd.default]
    with torch.no_grad():
        expected = torch._transformer_encoder_layer_fwd(x, *fused_args(layer, use_gelu), mask, mask_type)
        actual = decomposed(x, *fused_args(layer, use_gelu), mask, mask_type)
    assert torch.equal(actual.isnan(), expected.isnan())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_encoder_layer_decomposition_rejects_an_untyped_mask_of_another_shape():
    layer = encoder_layer(False, "relu")
    x = torch.randn(BATCH, LENGTH, EMBED)
    decomposed = FAST_PATH_DECOMPOSITIONS[aten._transformer_encoder_layer_fwd.default]
    with torch.no_grad(), pytest.raises(RuntimeError, match="mask without a mask_type"):
        decomposed(x, *fused_args(layer, False), torch.zeros(BATCH, LENGTH, dtype=torch.bool), None)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_layer_runs_on_aspen(norm_first, activation):
    """In eval under no_grad the layer takes PyTorch's fast path, one fused op that aspen
    has no rule for; strict mode passes only if the decomposition reached the partitioner."""
    layer = encoder_layer(norm_first, activation, embed=32)
    report = assert_matches_eager(layer, torch.randn(2, 9, 32), options={"min_tile_flops": 1e3})
    assert {"aten.addmm.default", "aten.native_layer_norm.default"} <= set(report.tiles_per_op)


def test_transformer_encoder_with_padding_and_causal_masks_runs_on_aspen():
    """Masks of one dtype reach the fused op merged into one [B, H, L, L] mask (mask_type 2).
    is_causal=True: else the encoder compares the mask with a causal one in Python (a graph
    break). enable_nested_tensor=False: with nested tensors eager zeroes the padded
    positions, which dynamo's trace (any backend) does not."""
    layer = encoder_layer(False, "relu", embed=32)
    stack = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    causal = torch.triu(torch.ones(9, 9, dtype=torch.bool), 1)

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stack = stack

        def forward(self, x, padding):
            return self.stack(x, mask=causal, src_key_padding_mask=padding, is_causal=True)

    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[0, 6:] = True
    report = assert_matches_eager(Masked().eval(), torch.randn(2, 9, 32), padding, options={"min_tile_flops": 1e3})
    assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in report.tiles_per_op
