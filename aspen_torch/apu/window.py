"""Index-range math of sliding-window ops (convolution, pooling) along output rows."""
from __future__ import annotations

import dataclasses

from .policy import split_range


@dataclasses.dataclass(frozen=True)
class Window:
    kernel: int
    stride: int
    padding: int
    dilation: int

    def input_rows(self, out_start: int, out_stop: int, size: int) -> tuple[int, int, int, int]:
        """Input rows [start, stop) that output rows [out_start, out_stop) read, clipped to
        [0, size), and how many padding rows fall above and below them."""
        first = out_start * self.stride - self.padding
        last = (out_stop - 1) * self.stride - self.padding + self.dilation * (self.kernel - 1) + 1
        return max(first, 0), min(last, size), max(-first, 0), max(last - size, 0)

    def output_rows(self, rows: int, padding: int) -> int:
        """Output rows over `rows` input rows with `padding` zero rows on both sides."""
        return (rows + 2 * padding - self.dilation * (self.kernel - 1) - 1) // self.stride + 1


def output_bands(batch: int, out_rows: int, tiles: int, split_rows: bool) -> list[tuple[int, int, int, int]]:
    """(n0, n1, row0, row1) per tile: batch chunks when the batch covers the tiles
    (no halo re-reads), otherwise row bands of each image."""
    if tiles <= batch or not split_rows:
        return [(n0, n1, 0, out_rows) for n0, n1 in split_range(batch, tiles)]
    per_image = -(-tiles // batch)
    return [(n, n + 1, r0, r1) for n in range(batch) for r0, r1 in split_range(out_rows, per_image)]


def pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])
