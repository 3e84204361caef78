"""Memory planning: TileGraph -> MemoryPlan. Activation buffers whose lifetimes do not
overlap share one slot of memory, so a call's working set stays small and recently
written (cache-hot) memory is written again instead of cold memory.

Tile indices are a topological order (lowering appends tiles in graph order), so a
buffer is live from its first writer to its last reader. A buffer takes over a slot
only after the previous occupant's last use, and every writer of the new buffer gets an
edge from every tile that last touches the old one: each reader (write-after-read), and
each writer that no reader depends on (write-after-write: a dead value, or rows a strided
reader skips). Tiles of later ops may run ahead of earlier ones; without those edges a
writer could overwrite data a slower DSE has yet to read, or be overwritten by a late one.
The edges go from lower to higher tile indices, so the graph stays acyclic.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .apu.tile_graph import Buffer, TileGraph

# Slots start on cache-line multiples, so every reused buffer keeps kernels' alignment.
_ALIGN = 64


@dataclasses.dataclass
class MemoryPlan:
    slot_bytes: list[int]  # capacity of each slot
    slot_of: dict[Buffer, int]  # activation buffer -> its slot; buffers not listed get their own memory
    extra_edges: list[tuple[int, int]]  # write-after-read edges that make the sharing safe


def _nbytes(buf: Buffer) -> int:
    size = math.prod(buf.shape) * torch.empty((), dtype=buf.dtype).element_size()
    return -(-size // _ALIGN) * _ALIGN


def _buffer_uses(graph: TileGraph) -> tuple[dict[Buffer, list[int]], dict[Buffer, list[int]]]:
    """Tiles writing and reading each buffer (a tile's inputs are every view it reads)."""
    writers: dict[Buffer, list[int]] = {}
    readers: dict[Buffer, list[int]] = {}
    for index, tile in enumerate(graph.tiles):
        writers.setdefault(tile.out.ref.buffer, []).append(index)
        for region in tile.inputs:
            if region is not None:
                readers.setdefault(region.ref.buffer, []).append(index)
    return writers, readers


def _last_touches(graph: TileGraph, writers: dict[Buffer, list[int]],
                  readers: dict[Buffer, list[int]]) -> dict[Buffer, list[int]]:
    """Per buffer, the tiles after which nothing touches it: its readers, and the writers
    none of its readers depends on (lowering adds an edge from each writer to each reader
    of what it wrote, so a writer without such an edge is ordered before no reader)."""
    children: dict[int, set[int]] = {}
    for parent, child in graph.edges:
        children.setdefault(parent, set()).add(child)
    last: dict[Buffer, list[int]] = {}
    for buf, buf_writers in writers.items():
        read = set(readers.get(buf, []))
        last[buf] = sorted(read | {w for w in buf_writers if not children.get(w, set()) & read})
    return last


def plan_memory(graph: TileGraph) -> MemoryPlan:
    writers, readers = _buffer_uses(graph)
    pinned = {ref.buffer for ref in graph.input_refs} | {ref.buffer for ref in graph.output_refs}
    shared = [b for b in writers if b.constant is None and b not in pinned]
    shared.sort(key=lambda b: writers[b][0])

    last_touches = _last_touches(graph, writers, readers)
    last_use = {b: max(last_touches[b]) for b in shared}
    slot_bytes: list[int] = []
    occupant: list[Buffer] = []  # last buffer placed in each slot
    slot_of: dict[Buffer, int] = {}
    extra_edges: set[tuple[int, int]] = set()
    for buf in shared:
        first_write = writers[buf][0]
        size = _nbytes(buf)
        # Free slots: their occupant's last use comes before this buffer's first write.
        free = [s for s, old in enumerate(occupant) if last_use[old] < first_write]
        # Prefer a slot that fits, smallest first; otherwise grow the largest free one.
        fitting = [s for s in free if slot_bytes[s] >= size]
        if fitting:
            slot = min(fitting, key=lambda s: slot_bytes[s])
        elif free:
            slot = max(free, key=lambda s: slot_bytes[s])
            slot_bytes[slot] = size
        else:
            slot = len(slot_bytes)
            slot_bytes.append(size)
            occupant.append(buf)
        if occupant[slot] is not buf:
            old = occupant[slot]
            for before in last_touches[old]:
                for writer in writers[buf]:
                    extra_edges.add((before, writer))
            occupant[slot] = buf
        slot_of[buf] = slot
    return MemoryPlan(slot_bytes, slot_of, sorted(extra_edges))
