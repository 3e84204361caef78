"""Model families from transformers configs (random weights, nothing downloaded), small
sizes, in strict mode vs eager. Each one once broke the backend in its own way: GPT-2 and
LLaMA carry tensor literals, LLaMA grouped-query attention, RoBERTa position ids built by
cumsum and a Python-number add, HF ResNet a shortcut conv after its main branch,
MobileNetV2 explicit (TF-style) padding."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
from helpers import assert_matches_eager

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")


class FirstOutput(nn.Module):
    """The model's first output (last hidden state), so the helper compares a tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, *inputs):
        return self.model(*inputs)[0]


def _with_unit_scale_convs(model: nn.Module) -> nn.Module:
    # transformers' CNN inits (std 0.02, no fan-in scaling) shrink activations to ~1e-20
    # after a few layers, where any tolerance passes; Kaiming init keeps them O(1).
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    return model


def _tokens(vocab: int, batch: int = 2, seq: int = 24) -> tuple:
    return (torch.randint(2, vocab, (batch, seq)),)


T = transformers
CASES = {
    "gpt2": lambda: (T.GPT2Model(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500)), _tokens(500)),
    "llama-gqa": lambda: (T.LlamaModel(T.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=500)), _tokens(500)),
    "roberta": lambda: (T.RobertaModel(T.RobertaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=500)),
        _tokens(500)),
    "distilbert": lambda: (T.DistilBertModel(T.DistilBertConfig(
        n_layers=2, dim=64, hidden_dim=128, n_heads=4, vocab_size=500)), _tokens(500)),
    "t5-encoder": lambda: (T.T5EncoderModel(T.T5Config(
        num_layers=2, d_model=64, d_ff=128, d_kv=16, num_heads=4, vocab_size=500)), _tokens(500)),
    "vit": lambda: (T.ViTModel(T.ViTConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, image_size=32,
        patch_size=8)), (torch.randn(2, 3, 32, 32),)),
    "resnet": lambda: (_with_unit_scale_convs(T.ResNetModel(T.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]))), (torch.randn(2, 3, 64, 64),)),
    "mobilenet-v2": lambda: (_with_unit_scale_convs(T.MobileNetV2Model(T.MobileNetV2Config(
        depth_multiplier=0.35, image_size=64))), (torch.randn(2, 3, 64, 64),)),
    "convnext": lambda: (_with_unit_scale_convs(T.ConvNextModel(T.ConvNextConfig(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_scale_init_value=1.0))),
        (torch.randn(2, 3, 64, 64),)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_family_matches_eager(name):
    model, inputs = CASES[name]()
    with torch.no_grad():
        scale = FirstOutput(model)(*inputs).abs().max().item()
    assert 1e-2 < scale < 1e3, "outputs of a size the tolerance can judge"
    assert_matches_eager(FirstOutput(model), *inputs, rtol=1e-4, atol=1e-4 * scale)
