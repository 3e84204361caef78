"""transformers model families (small configs, random weights, nothing downloaded) in
strict mode vs eager. Several once broke the backend in their own way: GPT-2 and LLaMA
carry tensor literals, LLaMA grouped-query attention, RoBERTa position ids built by
cumsum and a Python-number add, HF ResNet a shortcut conv after its main branch,
MobileNetV2 explicit (TF-style) padding, CLIP an argmax, ConvNeXt V2 a vector norm, DPT
transposed convolutions."""
from __future__ import annotations

import os

import pytest
import torch
from helpers import assert_matches_eager

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")
from aspen_torch.models.transformers_zoo import families  # noqa: E402

WHOLE = sorted(name for name, family in families().items() if family.runs_whole)


@pytest.mark.parametrize("name", WHOLE)
def test_model_family_matches_eager(name):
    model, inputs = families()[name].make()
    with torch.no_grad():
        scale = model(*inputs).abs().max().item()
    assert 1e-3 < scale < 1e3, "outputs of a size the tolerance can judge"
    assert_matches_eager(model, *inputs, rtol=1e-4, atol=1e-4 * scale)
