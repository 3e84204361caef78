"""End-to-end models in strict mode vs eager."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_matches_eager

import aspen_torch
from aspen_torch.models import SmallCNN, UNet, resnet18, resnet50


@pytest.mark.parametrize("batch", [1, 3])
def test_small_cnn(batch):
    report = assert_matches_eager(SmallCNN().eval(), torch.randn(batch, 3, 37, 29))
    assert report.num_partitions == 1


@pytest.mark.parametrize("batch", [1, 2])
def test_unet(batch):
    """Encoder-decoder: every op on aspen, one partition (transposed convs, skip concats, resizing)."""
    model = UNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
    report = assert_matches_eager(model, torch.randn(batch, 3, 48, 40))
    assert report.num_partitions == 1 and report.tiles_per_op["aten.convolution.default"] > 13


def test_resnet18_non_square():
    assert_matches_eager(resnet18(), torch.randn(2, 3, 96, 128))


@pytest.mark.parametrize("batch", [1, 4])
def test_resnet50(batch):
    before = aspen_torch.runtime_stats()["tiles_per_dse"]
    report = assert_matches_eager(resnet50(), torch.randn(batch, 3, 224, 224), options={"num_dses": 2})
    assert report.num_partitions == 1
    # Every convolution is cut into more than one tile.
    (graph,) = report.tile_graphs
    per_conv = {}
    for tile in graph.tiles:
        if tile.op_label == "aten.convolution.default":
            per_conv[tile.node_name] = per_conv.get(tile.node_name, 0) + 1
    assert len(per_conv) == 53 and min(per_conv.values()) > 1
    # Batch norm and the activations were folded or fused: only these ops have tiles.
    assert set(report.tiles_per_op) <= {"aten.convolution.default", "aten.max_pool2d_with_indices.default",
                                        "aten.mean.dim", "aten.addmm.default", "aten.view.default"}
    after = aspen_torch.runtime_stats()["tiles_per_dse"]
    ran = [a - b for a, b in zip(after, before + [0] * (len(after) - len(before)))]
    assert len(ran) == 2 and all(n > 0 for n in ran), f"both DSEs ran tiles: {ran}"
