"""How many tiles an op's output is cut into."""
from __future__ import annotations

import dataclasses
import math


# Memory-bound tiles (elementwise, copies, softmax, norms) count as this many FLOPs per
# element when deciding how many tiles an op gets: measured on BERT-base B8, such tiles
# took ~0.5-0.8 ns per element on one DSE, the time of ~50-80 GEMM FLOPs at ~100 GFLOP/s.
# A lower figure left 3 MB elementwise ops as one tile on the critical path.
MEMORY_BOUND_FLOPS_PER_ELEMENT = 50.0


def split_range(length: int, parts: int) -> list[tuple[int, int]]:
    """Cuts [0, length) into `parts` contiguous ranges whose sizes differ by at most one."""
    parts = max(1, min(parts, length))
    base, extra = divmod(length, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


@dataclasses.dataclass(frozen=True)
class TilePolicy:
    """Enough tiles to keep every DSE busy, none smaller than `min_tile_flops` of work.

    Cutting an op costs kernel efficiency: ResNet-50 B1 on one DSE takes 92 ms with
    one tile per op, 109 ms with 4 and 124 ms with 8 (eager, one thread: 134 ms).
    Parallelism across ops makes up for fewer tiles per op, so the default is one
    tile per DSE per op, and never less than `min_tile_flops` of work per tile.
    """

    num_dses: int
    tiles_per_dse: int = 1
    min_tile_flops: float = 4e6

    @property
    def wanted_tiles(self) -> int:
        """Tiles enough to keep every DSE busy."""
        return self.num_dses * self.tiles_per_dse

    def num_tiles(self, flops: float, max_tiles: int, batch: int = 1, images_per_tile: int = 1) -> int:
        """Tiles for an op of `flops` work that can be cut at most `max_tiles` ways,
        `batch` of them along a batch dimension that cuts without halos. A batch is cut into
        chunks of at most `images_per_tile` images even when fewer tiles would keep the DSEs
        busy: a DSE then carries a chunk through several ops while it is in cache
        (depth-first). One image a tile, unless an op's weights make larger chunks pay
        (conv_pool.py, _images_per_tile)."""
        wanted = max(self.wanted_tiles, -(-batch // images_per_tile))
        by_work = max(1, math.floor(flops / self.min_tile_flops))
        return max(1, min(wanted, by_work, max_tiles))


def split_dims(shape: tuple[int, ...], dims: tuple[int, ...], parts: int) -> list[tuple[tuple[int, int], ...]]:
    """Cuts a tensor's full box into about `parts` boxes along `dims`, outermost first."""
    boxes = [tuple((0, s) for s in shape)]
    for d in dims:
        if parts <= 1:
            break
        cuts = min(parts, shape[d])
        parts = math.ceil(parts / cuts)
        boxes = [b[:d] + (r,) + b[d + 1:] for b in boxes for r in split_range(shape[d], cuts)]
    return boxes
