"""Small configs of transformers' model families with random weights (nothing is
downloaded), each with example inputs: what tests/test_hf_models.py checks against
eager and examples/model_zoo.py reports on. Needs `pip install transformers`."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class Family:
    make: Callable[[], tuple[nn.Module, tuple]]  # (model in eval mode, example inputs)
    runs_whole: bool  # every op has an aspen rule (strict mode compiles it)
    note: str = ""


class FirstOutput(nn.Module):
    """The model's first output (the last hidden state) as a plain tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, *inputs):
        return self.model(*inputs)[0]


class EncoderDecoder(nn.Module):
    """An encoder-decoder's last decoder hidden state, the decoder fed the first tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, ids):
        return self.model(input_ids=ids, decoder_input_ids=ids[:, :7])[0]


class LastHiddenState(nn.Module):
    """The model's last hidden state, for models whose first output is something else (a
    detector's reference points, which depend on the weights alone)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, *inputs):
        return self.model(*inputs).last_hidden_state


def _unit_scale(model: nn.Module) -> nn.Module:
    # transformers' CNN inits (std 0.02 weights, also on batch-norm scales, no fan-in
    # scaling) shrink activations to ~1e-40 after a few layers, where any tolerance passes.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    return model


def _tokens(batch: int = 2, seq: int = 24) -> tuple:
    return (torch.randint(2, 500, (batch, seq)),)


def _padded_tokens() -> tuple:
    ids, = _tokens()
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    return ids, mask


def _images(size: int = 64) -> tuple:
    return (torch.randn(2, 3, size, size),)


_LM = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=500)
_VIT = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, image_size=32,
            patch_size=8)


def _llava(T) -> tuple[nn.Module, tuple]:
    vision = T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    text = T.LlamaConfig(**_LM, num_key_value_heads=2)
    config = T.LlavaConfig(vision_config=vision, text_config=text, image_token_index=499,
                           vision_feature_layer=-2, vision_feature_select_strategy="full")
    ids, = _tokens(batch=1, seq=30)
    ids[ids == 499] = 2
    ids[0, 2:19] = 499  # an image's 16 patches and its class token
    return LastHiddenState(T.LlavaModel(config)), (ids, torch.randn(1, 3, 32, 32))


def _deformable_detr(T) -> tuple[nn.Module, tuple]:
    backbone = T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                              out_features=["stage2", "stage3", "stage4"])
    config = T.DeformableDetrConfig(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, encoder_n_points=2, decoder_n_points=2,
        num_feature_levels=3)
    return LastHiddenState(_unit_scale(T.DeformableDetrModel(config))), (torch.randn(1, 3, 64, 64),)


def families() -> dict[str, Family]:
    import transformers as T

    def lm(model_cls, config_cls, inputs=_tokens, **config):
        return lambda: (FirstOutput(model_cls(config_cls(**config))), inputs())

    def cnn(model_cls, config_cls, size=64, **config):
        return lambda: (FirstOutput(_unit_scale(model_cls(config_cls(**config)))), _images(size))

    return {
        "gpt2": Family(lm(T.GPT2Model, T.GPT2Config, n_layer=2, n_embd=64, n_head=4, vocab_size=500), True,
                       "tensor literals"),
        "llama": Family(lm(T.LlamaModel, T.LlamaConfig, _padded_tokens, num_key_value_heads=2, **_LM), True,
                        "grouped-query attention, padding mask"),
        "mistral": Family(lm(T.MistralModel, T.MistralConfig, num_key_value_heads=2, **_LM), True),
        "qwen2": Family(lm(T.Qwen2Model, T.Qwen2Config, num_key_value_heads=2, **_LM), True),
        "phi": Family(lm(T.PhiModel, T.PhiConfig, **_LM), True),
        "gemma": Family(lm(T.GemmaModel, T.GemmaConfig, num_key_value_heads=2, head_dim=16, **_LM), True),
        "falcon": Family(lm(T.FalconModel, T.FalconConfig, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                            vocab_size=500), True, "parallel attention and MLP"),
        "bloom": Family(lm(T.BloomModel, T.BloomConfig, n_layer=2, hidden_size=64, n_head=4, vocab_size=500), True,
                        "ALiBi"),
        "opt": Family(lm(T.OPTModel, T.OPTConfig, num_hidden_layers=2, hidden_size=64, ffn_dim=128,
                         num_attention_heads=4, vocab_size=500, word_embed_proj_dim=64), True),
        "bert": Family(lm(T.BertModel, T.BertConfig, _padded_tokens, **_LM), True, "padding mask"),
        "roberta": Family(lm(T.RobertaModel, T.RobertaConfig, **_LM), True, "position ids by cumsum"),
        "distilbert": Family(lm(T.DistilBertModel, T.DistilBertConfig, n_layers=2, dim=64, hidden_dim=128,
                                n_heads=4, vocab_size=500), True),
        "albert": Family(lm(T.AlbertModel, T.AlbertConfig, embedding_size=32, **_LM), True),
        "electra": Family(lm(T.ElectraModel, T.ElectraConfig, embedding_size=32, **_LM), True),
        "deberta-v2": Family(lm(T.DebertaV2Model, T.DebertaV2Config, **_LM), True),
        "t5-encoder": Family(lm(T.T5EncoderModel, T.T5Config, num_layers=2, d_model=64, d_ff=128, d_kv=16,
                                num_heads=4, vocab_size=500), True),
        "clip-text": Family(lm(T.CLIPTextModel, T.CLIPTextConfig, **_LM), True, "argmax pooling"),
        "vit": Family(lambda: (FirstOutput(T.ViTModel(T.ViTConfig(**_VIT))), _images(32)), True),
        "deit": Family(lambda: (FirstOutput(T.DeiTModel(T.DeiTConfig(**_VIT))), _images(32)), True),
        "dinov2": Family(lambda: (FirstOutput(T.Dinov2Model(T.Dinov2Config(**_VIT))), _images(32)), True),
        "beit": Family(lambda: (FirstOutput(T.BeitModel(T.BeitConfig(**_VIT, use_relative_position_bias=True))),
                                _images(32)), True, "relative position bias"),
        "yolos": Family(lambda: (FirstOutput(T.YolosModel(T.YolosConfig(**{**_VIT, "image_size": [32, 32]},
                                                                       num_detection_tokens=4))), _images(32)),
                        True, "position embeddings added after a linear, expanded over the batch"),
        "mixtral": Family(lm(T.MixtralModel, T.MixtralConfig, num_key_value_heads=2, num_local_experts=4,
                             num_experts_per_tok=2, **_LM), True,
                          "mixture of experts: routing histogram, transformers' grouped mm of the experts"),
        "deformable-detr": Family(lambda: _deformable_detr(T), True,
                                  "ResNet backbone, multi-scale deformable attention (grid sampling)"),
        "llava": Family(lambda: _llava(T), True, "image features merged into the tokens (masked_scatter)"),
        "longformer": Family(lm(T.LongformerModel, T.LongformerConfig, attention_window=8, **_LM), True,
                             "sliding-window attention by overlapping chunks (as_strided of a permuted view)"),
        "bart": Family(lambda: (EncoderDecoder(T.BartModel(T.BartConfig(
            d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=500))), _tokens()), True,
            "encoder-decoder, cross-attention"),
        "clip-vision": Family(lambda: (FirstOutput(T.CLIPVisionModel(T.CLIPVisionConfig(**_VIT))), _images(32)),
                              True),
        "resnet": Family(cnn(T.ResNetModel, T.ResNetConfig, embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                             depths=[1, 1, 1, 1]), True, "shortcut conv after the main branch"),
        "mobilenet-v2": Family(cnn(T.MobileNetV2Model, T.MobileNetV2Config, depth_multiplier=0.35, image_size=64),
                               True, "explicit (TF-style) padding"),
        "convnext": Family(cnn(T.ConvNextModel, T.ConvNextConfig, hidden_sizes=[16, 32, 64, 128],
                               depths=[1, 1, 1, 1], layer_scale_init_value=1.0), True),
        "convnext-v2": Family(cnn(T.ConvNextV2Model, T.ConvNextV2Config, hidden_sizes=[16, 32, 64, 128],
                                  depths=[1, 1, 1, 1]), True, "global response norm (vector norm)"),
        "mobilevit": Family(cnn(T.MobileViTModel, T.MobileViTConfig, image_size=64, hidden_sizes=[16, 24, 32],
                                neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48]), True, "patches unfolded into tokens"),
        "dpt-depth": Family(cnn(T.DPTForDepthEstimation, T.DPTConfig, size=32, **{**_VIT, "num_hidden_layers": 4},
                                neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32,
                                backbone_out_indices=[0, 1, 2, 3], reassemble_factors=[4, 2, 1, 0.5]), True,
                            "transposed convs, upsampling head"),
        "regnet": Family(cnn(T.RegNetModel, T.RegNetConfig, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                             groups_width=8), True, "grouped convs"),
        "efficientnet": Family(cnn(T.EfficientNetModel, T.EfficientNetConfig, image_size=64,
                                   depth_coefficient=0.3), True, "depthwise convs, squeeze-excite"),
        "segformer": Family(cnn(T.SegformerModel, T.SegformerConfig, num_encoder_blocks=2, depths=[1, 1],
                                sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                                strides=[4, 2], patch_sizes=[7, 3], mlp_ratios=[2, 2]), True),
        "hiera": Family(cnn(T.HieraModel, T.HieraConfig, image_size=[64, 64], embed_dim=16, num_heads=[1, 2],
                            depths=[1, 1], embed_dim_multiplier=2.0, num_query_pool=1, query_stride=[2, 2],
                            masked_unit_size=[4, 4], patch_stride=[4, 4]), True,
                        "mask-unit attention (views that merge dims beside a dim of size 1)"),
        "swin": Family(cnn(T.SwinModel, T.SwinConfig, size=32, image_size=32, patch_size=4, embed_dim=16,
                           depths=[1, 1], num_heads=[2, 2], window_size=4), True, "strided slices (patch merging)"),
        "whisper-encoder": Family(lambda: (FirstOutput(T.WhisperModel(T.WhisperConfig(
            d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=32)).encoder),
            (torch.randn(2, 16, 64),)), True, "1-d convolutions"),
        "wav2vec2": Family(lambda: (FirstOutput(_unit_scale(T.Wav2Vec2Model(T.Wav2Vec2Config(
            **{**_LM, "vocab_size": 32}, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_feat_extract_layers=2, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)))),
            (torch.randn(2, 800),)), True, "1-d convolutions, group norm"),
    }
