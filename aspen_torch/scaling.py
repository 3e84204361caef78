"""Scaling on paper: from measured per-tile times, a tile graph's work, span (critical path)
and simulated makespans for P DSEs, against an operator-barrier schedule of the same tiles.

The aspen schedule is greedy list scheduling (a free DSE takes the ready tile with the
longest remaining path), which is what the ready pool approximates. The barrier schedule
runs each op's tiles balanced over P workers (longest first) and waits for all of them
before the next op, as a framework calling one parallel kernel per op does. Neither
counts scheduling overhead or memory contention; they bound what tiling can expose.
"""
from __future__ import annotations

import dataclasses
import heapq
from typing import Sequence

from .apu.tile_graph import TileGraph

DEFAULT_DSE_COUNTS = (1, 2, 4, 8, 16, 64)


def _bottom_levels(graph: TileGraph, durations: Sequence[float]) -> list[float]:
    children: list[list[int]] = [[] for _ in graph.tiles]
    for parent, child in graph.edges:
        children[parent].append(child)
    level = [0.0] * len(graph.tiles)
    # Tiles are created in a topological order (a tile's inputs exist before it), so a
    # reverse sweep sees every child before its parents.
    for t in reversed(range(len(graph.tiles))):
        level[t] = durations[t] + max((level[c] for c in children[t]), default=0.0)
    return level


def work_and_span(graph: TileGraph, durations: Sequence[float]) -> tuple[float, float]:
    return float(sum(durations)), max(_bottom_levels(graph, durations), default=0.0)


def list_schedule_makespan(graph: TileGraph, durations: Sequence[float], num_dses: int) -> float:
    priority = _bottom_levels(graph, durations)
    pending = [0] * len(graph.tiles)
    children: list[list[int]] = [[] for _ in graph.tiles]
    for parent, child in graph.edges:
        pending[child] += 1
        children[parent].append(child)
    ready = [(-priority[t], t) for t in range(len(graph.tiles)) if pending[t] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []
    now, idle = 0.0, num_dses
    while ready or running:
        while ready and idle:
            _, t = heapq.heappop(ready)
            heapq.heappush(running, (now + durations[t], t))
            idle -= 1
        now, done = heapq.heappop(running)
        idle += 1
        for c in children[done]:
            pending[c] -= 1
            if pending[c] == 0:
                heapq.heappush(ready, (-priority[c], c))
    return now


def barrier_makespan(graph: TileGraph, durations: Sequence[float], num_dses: int) -> float:
    ops: dict[str, list[float]] = {}
    for tile, duration in zip(graph.tiles, durations):
        ops.setdefault(tile.node_name, []).append(duration)
    total = 0.0
    for tile_times in ops.values():
        loads = [0.0] * num_dses
        for d in sorted(tile_times, reverse=True):
            loads[loads.index(min(loads))] += d
        total += max(loads)
    return total


@dataclasses.dataclass
class ScalingReport:
    work_ms: float
    span_ms: float
    # (DSEs, simulated aspen makespan ms, simulated barrier makespan ms)
    rows: list[tuple[int, float, float]]

    def __str__(self) -> str:
        lines = [f"work {self.work_ms:.1f} ms, span (critical path) {self.span_ms:.1f} ms, "
                 f"parallelism {self.work_ms / max(self.span_ms, 1e-9):.1f}",
                 f"{'DSEs':>5} {'aspen ms':>10} {'barrier ms':>11} {'barrier/aspen':>14}"]
        lines += [f"{p:>5} {a:>10.1f} {b:>11.1f} {b / max(a, 1e-9):>13.2f}x" for p, a, b in self.rows]
        return "\n".join(lines)


def simulate(graphs: Sequence[TileGraph], durations: Sequence[Sequence[float]],
             dse_counts: Sequence[int] = DEFAULT_DSE_COUNTS) -> ScalingReport:
    """Graphs (partitions) run one after the other, so their numbers add up."""
    work = span = 0.0
    for g, d in zip(graphs, durations):
        w, s = work_and_span(g, d)
        work, span = work + w, span + s
    rows = [(p, sum(list_schedule_makespan(g, d, p) for g, d in zip(graphs, durations)),
             sum(barrier_makespan(g, d, p) for g, d in zip(graphs, durations))) for p in dse_counts]
    return ScalingReport(work / 1e6, span / 1e6, [(p, a / 1e6, b / 1e6) for p, a, b in rows])
