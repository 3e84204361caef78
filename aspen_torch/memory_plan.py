"""Memory planning: TileGraph -> MemoryPlan. Activation buffers whose lifetimes do not
overlap share one slot of memory, so a call's working set stays small and recently
written (cache-hot) memory is written again instead of cold memory.

Tile indices are a topological order (lowering appends tiles in graph order), so a
buffer is live from its first writer to its last reader. A buffer takes over a slot
only after the previous occupant's last use. Tiles of later ops may run ahead of
earlier ones, so every writer of the new buffer gets an edge from every earlier tile
that touched the same bytes of the slot: readers (write-after-read) and writers
(write-after-write: a dead value, or rows a strided reader skips). Which bytes a tile
touches is index-range math: its region's box through the views onto the buffer, then
the box's first and last element in the buffer's layout. Edges go only between tiles
whose byte ranges meet, so a batch's images (or a band's rows) stay independent across
the reuse: a DSE can carry one image through many ops while it is in cache, where
whole-buffer edges made every op a barrier. The edges go from lower to higher tile
indices, so the graph stays acyclic.

One buffer takes a slot while its occupant is still read: a convolution adding a
residual that dies there writes its result over the residual's own bytes (in place).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from .apu.tile_graph import Buffer, PointwiseOp, Region, TileGraph, TileKind

# Slots start on cache-line multiples, so every reused buffer keeps kernels' alignment.
_ALIGN = 64

ByteRange = tuple[int, int]  # [start, stop) in a slot


@dataclasses.dataclass
class MemoryPlan:
    slot_bytes: list[int]  # capacity of each slot
    slot_of: dict[Buffer, int]  # activation buffer -> its slot; buffers not listed get their own memory
    extra_edges: list[tuple[int, int]]  # write-after-read/write edges that make the sharing safe


def _nbytes(buf: Buffer) -> int:
    size = math.prod(buf.shape) * buf.dtype.itemsize
    return -(-size // _ALIGN) * _ALIGN


class _ByteRanges:
    """Byte range of a region in its buffer as the planner lays the buffer out (every
    buffer starts at its slot's first byte): a covering range, exact for a dense box."""

    def __init__(self) -> None:
        self._strides: dict[Buffer, tuple[int, ...]] = {}

    def of(self, region: Region) -> Optional[ByteRange]:
        buf = region.ref.buffer
        box = region.ref.buffer_box(region.box)
        if any(stop <= start for start, stop in box):
            return None
        strides = self._strides.get(buf)
        if strides is None:
            strides = self._strides[buf] = tuple(buf.meta().stride())
        first = sum(start * s for (start, _), s in zip(box, strides))
        last = sum((stop - 1) * s for (_, stop), s in zip(box, strides))
        size = buf.dtype.itemsize
        return first * size, (last + 1) * size


Touches = list[tuple[int, ByteRange]]  # (tile, the bytes it touches)


def _buffer_touches(graph: TileGraph, ranges: _ByteRanges) -> tuple[dict[Buffer, Touches], dict[Buffer, Touches]]:
    """Per buffer, the tiles writing it and the tiles reading it, with the bytes each touches."""
    writers: dict[Buffer, Touches] = {}
    readers: dict[Buffer, Touches] = {}
    for index, tile in enumerate(graph.tiles):
        for region, into in [(tile.out, writers)] + [(r, readers) for r in tile.inputs if r is not None]:
            span = ranges.of(region)
            if span is not None:
                into.setdefault(region.ref.buffer, []).append((index, span))
    return writers, readers


def _merged(spans: list[ByteRange]) -> list[ByteRange]:
    merged: list[ByteRange] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def _covered(span: ByteRange, merged: list[ByteRange]) -> bool:
    return any(start <= span[0] and span[1] <= stop for start, stop in merged)


class _Slot:
    """A slot's occupant and, per byte range, the last tiles that touched it: the tiles a
    new writer of those bytes must follow."""

    def __init__(self, size: int, occupant: Buffer) -> None:
        self.size = size
        self.occupant = occupant
        self.frontier: Touches = []

    def take(self, buf: Buffer, writes: Touches, reads: Touches, edges: set[tuple[int, int]]) -> None:
        # Writers taking the slot in place are in the frontier as readers of the old occupant;
        # each reads exactly the box it writes, so they need no order among themselves.
        writing = {w for w, _ in writes}
        for writer, (start, stop) in writes:
            edges.update((before, writer) for before, (b0, b1) in self.frontier
                         if b0 < stop and start < b1 and before not in writing)
        # A touch whose bytes the new writers overwrite is behind them now: any later writer
        # of those bytes meets one of these writers, which follows the old touch.
        written = _merged([span for _, span in writes])
        self.frontier = [t for t in self.frontier if not _covered(t[1], written)] + writes + reads
        self.occupant = buf


def plan_memory(graph: TileGraph) -> MemoryPlan:
    ranges = _ByteRanges()
    writers, readers = _buffer_touches(graph, ranges)
    pinned = {ref.buffer for ref in graph.input_refs} | {ref.buffer for ref in graph.output_refs}
    shared = [b for b in writers if b.constant is None and b not in pinned]
    shared.sort(key=lambda b: writers[b][0][0])
    last_use = {b: max(t for t, _ in writers[b] + readers.get(b, [])) for b in shared}
    slots: list[_Slot] = []
    slot_of: dict[Buffer, int] = {}
    extra_edges: set[tuple[int, int]] = set()
    for buf in shared:
        residual = _residual_to_overwrite(graph, buf, writers, readers)
        if residual is not None and residual in slot_of:
            slot = slot_of[residual]
        else:
            slot = _free_slot(slots, last_use, buf, writers[buf][0][0])
        slots[slot].take(buf, writers[buf], readers.get(buf, []), extra_edges)
        slot_of[buf] = slot
    return MemoryPlan([s.size for s in slots], slot_of, sorted(extra_edges))


def _free_slot(slots: list[_Slot], last_use: dict[Buffer, int], buf: Buffer, first_write: int) -> int:
    """A slot whose occupant's last use comes before `buf`'s first write, or a new one.
    Prefers a slot last holding a buffer of the same shape and layout: each image's (or
    band's) bytes then land where the same image's were, so the edges stay per image.
    Else a slot that fits, smallest first; else grows the largest free one."""
    size = _nbytes(buf)
    free = [s for s, slot in enumerate(slots) if last_use[slot.occupant] < first_write]
    same = [s for s in free if _same_layout(slots[s].occupant, buf)]
    if same:
        return same[0]
    fitting = [s for s in free if slots[s].size >= size]
    if fitting:
        return min(fitting, key=lambda s: slots[s].size)
    if free:
        slot = max(free, key=lambda s: slots[s].size)
        slots[slot].size = size
        return slot
    slots.append(_Slot(size, buf))
    return len(slots) - 1


def _residual_to_overwrite(graph: TileGraph, buf: Buffer, writers: dict[Buffer, Touches],
                           readers: dict[Buffer, Touches]) -> Optional[Buffer]:
    """The residual whose bytes `buf` may take over while its writers still read it: a
    ResNet block's shortcut that dies in the convolution tiles adding it. Over the
    residual's own bytes a convolution tile has oneDNN accumulate into them in place
    (csrc/kernels_window.cpp) instead of reading the residual and writing a second buffer,
    which keeps the block's footprint to one buffer; allowed when each tile reads the
    residual exactly at the box it writes, through nothing else, and no later tile reads
    the residual."""
    residual: Optional[Buffer] = None
    own = {w for w, _ in writers[buf]}
    for w in own:
        tile = graph.tiles[w]
        if tile.kind != TileKind.CONV2D or not tile.epilogue:
            return None
        step = tile.epilogue[0]
        if step.op != PointwiseOp.ADD or step.a != 1.0 or not step.operand:
            return None
        source = tile.args[step.operand]
        if source.ref.steps != tile.out.ref.steps or source.box != tile.out.box or \
                sum(r is not None and r.ref.buffer is source.ref.buffer for r in tile.inputs) != 1:
            return None
        if residual not in (None, source.ref.buffer):
            return None
        residual = source.ref.buffer
    if residual is None or not _same_layout(residual, buf):
        return None
    first_write = min(own)
    if any(r >= first_write and r not in own for r, _ in readers[residual]):
        return None
    return residual


def _same_layout(a: Buffer, b: Buffer) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.channels_last == b.channels_last
