"""Memory planning: buffers with disjoint lifetimes share slots, made safe by ordering edges."""
from __future__ import annotations

import itertools
from typing import Optional

import pytest
import torch
import torch.nn as nn
from helpers import assert_matches_eager

import aspen_torch
from aspen_torch.apu.tile_graph import Region, apply_view_steps
from aspen_torch.memory_plan import MemoryPlan, plan_memory
from aspen_torch.models import GPTBlock, SmallCNN, resnet18


def _chain():
    layers = []
    for _ in range(6):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def _ancestors(num_tiles: int, edges) -> list[int]:
    """Per tile, a bitmask of every tile that must finish before it starts."""
    parents: list[list[int]] = [[] for _ in range(num_tiles)]
    for a, b in edges:
        parents[b].append(a)
    above = [0] * num_tiles
    for t in range(num_tiles):  # tile indices are a topological order
        for p in parents[t]:
            above[t] |= above[p] | (1 << p)
    return above


def _bytes_touched(memory: MemoryPlan, region: Region) -> Optional[tuple[object, set[int]]]:
    """(which memory, the byte offsets in it) a region touches, laid out as the planner lays
    it out: a shared slot, or a buffer of its own. None for constants (never written)."""
    buf = region.ref.buffer
    if buf.constant is not None:
        return None
    strides = buf.meta().stride()  # the layout the planner gives the buffer
    extent = 1 + sum((size - 1) * stride for size, stride in zip(buf.shape, strides))
    element = torch.arange(extent).as_strided(buf.shape, strides)
    element = apply_view_steps(element, region.ref.steps)[tuple(slice(a, b) for a, b in region.box)]
    width = torch.empty((), dtype=buf.dtype).element_size()
    offsets = (element.reshape(-1, 1) * width + torch.arange(width)).reshape(-1)
    slot = memory.slot_of.get(buf)
    return ("slot", slot) if slot is not None else ("buffer", buf.name), set(offsets.tolist())


def _strided_reader():
    """Each 3x3 conv's output is read only by a stride-2 1x1 conv, which skips odd rows:
    the tiles writing those rows have no reader to order them before the slot's next user."""
    layers = []
    for _ in range(3):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1, stride=2), nn.ReLU(),
                   nn.Upsample(scale_factor=2)]
    return nn.Sequential(*layers).eval(), torch.randn(1, 8, 16, 16)


def _transformer_block():
    return GPTBlock(dim=32, heads=4).eval(), torch.randn(3, 37, 32)


def _bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                     num_hidden_layers=2, vocab_size=50)
    ids = torch.randint(0, 50, (3, 37))
    mask = torch.ones(3, 37, dtype=torch.long)
    mask[1:, 30:] = 0
    return transformers.BertModel(config).eval(), ids, mask


@pytest.mark.parametrize("make", [
    lambda: (_chain(), torch.randn(2, 8, 16, 16)),
    lambda: (SmallCNN().eval(), torch.randn(2, 3, 32, 32)),
    lambda: (resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32)),
    lambda: (resnet18(num_classes=10).eval(), torch.randn(2, 3, 32, 32)),
    _strided_reader,
    _transformer_block,
    _bert,
], ids=["conv_chain", "small_cnn", "resnet18", "resnet18_batch2", "strided_reader", "transformer_block", "bert"])
def test_every_conflicting_access_is_ordered(make):
    """Any two tiles touching the same bytes, one of them writing (in a shared slot: also
    bytes of different buffers), are ordered by the program's edges, whatever the schedule:
    read-after-write, write-after-read and write-after-write, checked on the planned layout."""
    model, *inputs = make()
    options = {"strict": True, "num_dses": 4, "tiles_per_dse": 4, "min_tile_flops": 1.0}
    (graph,) = aspen_torch.explain(model, *inputs, options=options).tile_graphs
    memory = plan_memory(graph)
    assert len(memory.slot_bytes) < len(memory.slot_of), "buffers share slots"
    above = _ancestors(len(graph.tiles), set(graph.edges) | set(memory.extra_edges))
    accesses: dict[object, list[tuple[int, bool, set[int]]]] = {}
    for index, tile in enumerate(graph.tiles):
        for region, writes in [(tile.out, True)] + [(r, False) for r in tile.inputs if r is not None]:
            touched = _bytes_touched(memory, region)
            if touched is not None:
                accesses.setdefault(touched[0], []).append((index, writes, touched[1]))
    checked = 0
    for per_memory in accesses.values():
        for (a, a_writes, a_bytes), (b, b_writes, b_bytes) in itertools.combinations(per_memory, 2):
            if a == b or not (a_writes or b_writes):
                continue
            first, second = min(a, b), max(a, b)
            ordered = (above[second] >> first) & 1
            assert ordered or not (a_bytes & b_bytes), (
                f"tiles {first} ({graph.tiles[first].node_name}) and {second} "
                f"({graph.tiles[second].node_name}) touch the same bytes unordered")
            checked += 1
    assert checked > len(graph.tiles)


def test_reuse_keeps_the_images_of_a_batch_independent():
    """A batch cut into one tile per image: a writer reusing a slot waits only for the tiles
    that touched the same image's bytes there, so one DSE can carry an image through many
    ops (whole-buffer edges made every reuse a barrier across the batch)."""
    options = {"num_dses": 2, "min_tile_flops": 1.0}
    (graph,) = aspen_torch.explain(_chain(), torch.randn(4, 8, 16, 16), options=options).tile_graphs
    memory = plan_memory(graph)
    image = [t.out.box[0] for t in graph.tiles]
    assert all(stop - start == 1 for start, stop in image), "one image per tile"
    assert memory.extra_edges, "the six convs reuse slots"
    crossing = [(a, b) for a, b in memory.extra_edges if image[a] != image[b]]
    assert not crossing, f"reuse edges between images: {crossing}"


class _Residual(nn.Module):
    """stem -> (1x1 conv, BN, ReLU, 1x1 conv, BN) + stem -> ReLU: the shortcut dies in the add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16))

    def forward(self, x):
        y = self.stem(x)
        return torch.relu(self.branch(y) + y).mean((2, 3))


@pytest.mark.parametrize("batch", [1, 3])
def test_a_dying_residual_is_overwritten_in_place(batch):
    """The convolution adding the shortcut writes its result over the shortcut's own bytes
    (oneDNN accumulates into them in place: no second buffer)."""
    model, x = _Residual().eval(), torch.randn(batch, 3, 16, 16)
    options = {"num_dses": 2, "tiles_per_dse": 2, "min_tile_flops": 1.0}
    (graph,) = aspen_torch.explain(model, x, options=options).tile_graphs
    memory = plan_memory(graph)
    adding = [t for t in graph.tiles if t.epilogue and t.epilogue[0].operand]
    assert adding and len({t.out.ref.buffer for t in adding}) == 1
    shortcut = adding[0].args[adding[0].epilogue[0].operand].ref.buffer
    assert memory.slot_of[adding[0].out.ref.buffer] == memory.slot_of[shortcut]
    assert_matches_eager(model, x, calls=10, options=options)


def test_reuse_shrinks_activation_memory():
    """Six convs (BN and ReLU fused): five intermediate buffers fit in two alternating slots,
    beside the input and output buffers (without reuse: seven buffers)."""
    report = aspen_torch.explain(_chain(), torch.randn(2, 8, 16, 16), options={"num_dses": 2})
    (graph,) = report.tile_graphs
    intermediate = {t.out.ref.buffer for t in graph.tiles} - {r.buffer for r in graph.output_refs}
    one_buffer = 2 * 8 * 16 * 16 * 4
    assert len(intermediate) == 5
    assert report.activation_bytes == (2 + 2) * one_buffer


def test_shared_slots_stay_correct_under_many_dses_and_tiles():
    """Many small tiles on 4 DSEs run ahead of each other; shared slots must never be
    overwritten early. Repeated calls catch an ordering bug that only some schedules hit."""
    assert_matches_eager(SmallCNN().eval(), torch.randn(2, 3, 32, 32), calls=20,
                         options={"num_dses": 4, "tiles_per_dse": 4, "min_tile_flops": 1.0})
