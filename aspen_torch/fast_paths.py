"""PyTorch's fused inference fast paths, decomposed into the ops they compute.

`nn.TransformerEncoderLayer` in eval under no_grad (batch_first, an even head count, relu or
gelu) calls `aten._transformer_encoder_layer_fwd`, one opaque op for the whole layer, which
aspen would leave to eager. AOTAutograd applies these decompositions while it traces
(capture.decomposition_table), so the layer reaches the partitioner as linears, layer norms
and scaled dot-product attention, which aspen tiles.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

aten = torch.ops.aten

# mask_type of ATen's masked softmax: a [L, S] attention mask, a [B, S] key padding mask, or
# one that broadcasts to the scores [B, H, L, S] (what MultiheadAttention.merge_masks makes).
_ATTENTION_MASK, _KEY_PADDING_MASK = 0, 1


def _self_attention(x: torch.Tensor, num_heads: int, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                    proj_weight: torch.Tensor, proj_bias: torch.Tensor, mask: Optional[torch.Tensor],
                    mask_type: Optional[int]) -> torch.Tensor:
    """ATen's native multi-head self-attention (need_weights=False) on x [B, L, E]. A mask
    is read as ATen's masked softmax on the CPU reads it: any nonzero entry (True, -inf,
    NaN, any number) hides its key, a query whose keys are all hidden gets NaN, and a mask
    without a mask_type must have the scores' shape [B, H, L, S]."""
    batch, length, embed = x.shape
    head_dim = embed // num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, length, num_heads, head_dim).transpose(1, 2)

    def projected(context: torch.Tensor) -> torch.Tensor:
        return F.linear(context.transpose(1, 2).reshape(batch, length, embed), proj_weight, proj_bias)

    q, k, v = (heads(t) for t in F.linear(x, qkv_weight, qkv_bias).chunk(3, dim=-1))
    if mask is None:
        return projected(F.scaled_dot_product_attention(q, k, v))
    hidden = mask if mask.dtype == torch.bool else mask != 0
    if mask_type == _KEY_PADDING_MASK:
        hidden = hidden.reshape(batch, 1, 1, length)
    elif mask_type == _ATTENTION_MASK:
        hidden = hidden.reshape(1, 1, length, length)
    elif mask_type is None and tuple(hidden.shape) != (batch, num_heads, length, length):
        raise RuntimeError("_transformer_encoder_layer_fwd: a mask without a mask_type must have the "
                           f"attention scores' shape {(batch, num_heads, length, length)}, got {tuple(hidden.shape)}")
    zero = torch.zeros((), dtype=x.dtype)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.where(hidden, float("-inf"), zero))
    # SDPA gives a query whose keys are all hidden zeros, where the fused op's softmax gives
    # NaN in that head's context, which the projection spreads over the query's whole row:
    # added there, [B, L, 1], it can join the residual add in the projection's tiles.
    all_hidden = hidden.to(x.dtype).amin(-1).amax(1, keepdim=True).transpose(1, 2) > 0
    return projected(context) + torch.where(all_hidden, float("nan"), zero)


def _transformer_encoder_layer(src: torch.Tensor, embed_dim: int, num_heads: int, qkv_weight: torch.Tensor,
                               qkv_bias: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor,
                               use_gelu: bool, norm_first: bool, eps: float, norm_weight_1: torch.Tensor,
                               norm_bias_1: torch.Tensor, norm_weight_2: torch.Tensor, norm_bias_2: torch.Tensor,
                               ffn_weight_1: torch.Tensor, ffn_bias_1: torch.Tensor, ffn_weight_2: torch.Tensor,
                               ffn_bias_2: torch.Tensor, mask: Optional[torch.Tensor] = None,
                               mask_type: Optional[int] = None) -> torch.Tensor:
    if src.numel() == 0:
        return src.clone()

    def norm(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, (embed_dim,), weight, bias, eps)

    def attention(t: torch.Tensor) -> torch.Tensor:
        return _self_attention(t, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, mask, mask_type)

    def feed_forward(t: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(t, ffn_weight_1, ffn_bias_1)
        return F.linear(F.gelu(hidden) if use_gelu else F.relu(hidden), ffn_weight_2, ffn_bias_2)

    if norm_first:
        x = src + attention(norm(src, norm_weight_1, norm_bias_1))
        return x + feed_forward(norm(x, norm_weight_2, norm_bias_2))
    x = norm(src + attention(src), norm_weight_1, norm_bias_1)
    return norm(x + feed_forward(x), norm_weight_2, norm_bias_2)


FAST_PATH_DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable] = {
    aten._transformer_encoder_layer_fwd.default: _transformer_encoder_layer,
}
