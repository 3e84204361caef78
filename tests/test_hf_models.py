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

import aspen_torch

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


def test_generate_with_a_compiled_forward_compiles_a_few_graphs_and_matches_eager():
    """model.generate with a KV cache: each step has a new key length. The prefill and the
    first decode steps run on aspen; the symbolic-size decode graph compiles its first
    length and runs later lengths in eager until they recur enough to pay a compile
    (a compile per token would make generating hundreds of times slower than eager)."""
    import transformers as T

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500)).eval()
    ids = torch.randint(0, 500, (1, 12))
    generate = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    report = aspen_torch.CompileReport()
    with torch.no_grad():
        expected = model.generate(ids, **generate)
        model.forward = torch.compile(model.forward, backend=lambda gm, ex: aspen_torch.aspen_backend(
            gm, ex, report=report))
        for _ in range(2):
            assert torch.equal(model.generate(ids, **generate), expected)
    assert report.num_tiles > 0 and not report.fallback_ops
    assert report.num_graphs <= 4, "not a compile per generated token"
    assert report.cold_calls >= 2 * 7, "later key lengths ran in eager"
