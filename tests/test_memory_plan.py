"""Memory planning: buffers with disjoint lifetimes share slots, made safe by write-after-read edges."""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn
from helpers import assert_matches_eager

import aspen_torch
from aspen_torch.memory_plan import buffer_uses, plan_memory
from aspen_torch.models import SmallCNN


def _chain():
    layers = []
    for _ in range(6):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def _reachable(num_tiles: int, edges) -> list[set[int]]:
    children = [[] for _ in range(num_tiles)]
    for a, b in edges:
        children[a].append(b)
    below: list[set[int]] = [set() for _ in range(num_tiles)]
    for t in reversed(range(num_tiles)):  # tile indices are a topological order
        for c in children[t]:
            below[t] |= {c} | below[c]
    return below


def test_slot_sharing_is_ordered_by_edges():
    """Two buffers in one slot: every reader of the earlier one reaches every writer of the
    later one through the program's edges, so no DSE overwrites data still to be read."""
    options = {"strict": True, "num_dses": 2, "tiles_per_dse": 3, "min_tile_flops": 1.0}
    report = aspen_torch.explain(_chain(), torch.randn(2, 8, 16, 16), options=options)
    (graph,) = report.tile_graphs
    memory = plan_memory(graph)
    assert len(memory.slot_bytes) < len(memory.slot_of), "a chain of convs reuses memory"
    below = _reachable(len(graph.tiles), set(graph.edges) | set(memory.extra_edges))
    writers, readers = buffer_uses(graph)
    by_slot: dict[int, list] = {}
    for buf, slot in memory.slot_of.items():
        by_slot.setdefault(slot, []).append(buf)
    checked = 0
    for bufs in by_slot.values():
        for a, b in itertools.combinations(sorted(bufs, key=lambda x: writers[x][0]), 2):
            for reader in readers.get(a, writers[a]):
                for writer in writers[b]:
                    assert writer in below[reader], f"{a.name} read by tile {reader} before {b.name} written by {writer}"
                    checked += 1
    assert checked > 0


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
