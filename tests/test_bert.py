"""BERT from transformers (random weights, nothing downloaded) in strict mode vs eager."""
from __future__ import annotations

import os

import pytest
import torch
from helpers import RTOL, assert_matches_eager

import aspen_torch

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")


class BertOutputs(torch.nn.Module):
    """BertModel returning (last_hidden_state, pooler_output), so the helper compares both."""

    def __init__(self, config):
        super().__init__()
        self.bert = transformers.BertModel(config).eval()

    def forward(self, input_ids, attention_mask):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def inputs(config, batch: int, seq: int):
    g = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(1, batch):
        mask[b, max(1, seq - 9 * b):] = 0  # padded sequences of several lengths
    return ids, mask


SMALL = dict(num_hidden_layers=2)


@pytest.mark.parametrize("batch,seq", [(1, 128), (3, 128), (8, 128), (1, 37), (3, 37)])
def test_bert_small(batch, seq):
    config = transformers.BertConfig(**SMALL)
    report = assert_matches_eager(BertOutputs(config), *inputs(config, batch, seq))
    assert report.num_partitions == 1


@pytest.mark.parametrize("batch,seq", [(1, 128), (3, 37)])
def test_bert_base(batch, seq):
    config = transformers.BertConfig()
    assert_matches_eager(BertOutputs(config), *inputs(config, batch, seq), rtol=RTOL, atol=2e-4, calls=1)


def test_encoder_layer_tiles_depend_only_on_what_they_read():
    """The next layer's projections read row blocks of this layer's output layer norm: each
    tile waits for the layer-norm tiles of its rows only, not for the whole layer. The fused
    attention of a (batch, head, query block) waits only for its batch's Q, K and V."""
    config = transformers.BertConfig(**SMALL)
    options = {"strict": True, "min_tile_flops": 1e3, "tiles_per_dse": 4, "num_dses": 2}
    # 296 rows against 768 columns: the projections are cut into 2 row blocks x 4 column blocks.
    report = aspen_torch.explain(BertOutputs(config), *inputs(config, 8, 37), options=options)
    (graph,) = report.tile_graphs
    parents = {}
    for p, c in graph.edges:
        parents.setdefault(c, set()).add(p)
    by_node = {}
    for i, t in enumerate(graph.tiles):
        by_node.setdefault(t.node_name, []).append(i)
    layer_norms = [n for n in by_node if n.startswith("native_layer_norm")]
    end_of_layer0 = by_node[layer_norms[2]]  # embeddings LN, layer 0 attention LN, layer 0 output LN
    assert len(end_of_layer0) > 2
    next_projections = [i for i, t in enumerate(graph.tiles)
                        if t.op_label == "aten.addmm.default" and parents.get(i, set()) & set(end_of_layer0)]
    assert next_projections, "layer 1 reads layer 0's output"
    for tile in next_projections:
        waits_for = parents[tile] & set(end_of_layer0)
        assert 0 < len(waits_for) < len(end_of_layer0), "a projection tile waits only for the rows it reads"
    attention_tiles = by_node[next(n for n in by_node if n.startswith("_scaled_dot_product_flash_attention"))]
    assert len(attention_tiles) > 3
    for tile in attention_tiles:
        producers = {graph.tiles[p].node_name for p in parents[tile]}
        assert len(parents[tile]) < sum(len(by_node[n]) for n in producers), "a query block waits for its batch only"
