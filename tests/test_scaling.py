"""Scaling on paper: work, span and simulated schedules of a tile graph."""
from __future__ import annotations

import torch
import torch.nn as nn

import aspen_torch
from aspen_torch.apu.tile_graph import Buffer, Region, TensorRef, Tile, TileGraph, TileKind
from aspen_torch.scaling import barrier_makespan, list_schedule_makespan, simulate, work_and_span


def graph(tiles_per_op: list[str], edges: list[tuple[int, int]]) -> TileGraph:
    out = Region(TensorRef.of(Buffer("b", (1,), torch.float32)), ((0, 1),))
    tiles = [Tile(TileKind.COPY, out, [], (), [], "op", name) for name in tiles_per_op]
    return TileGraph(tiles, edges, [], [], [], [])


def test_chain_has_no_parallelism():
    g = graph(["a", "b", "c"], [(0, 1), (1, 2)])
    d = [1.0, 2.0, 3.0]
    assert work_and_span(g, d) == (6.0, 6.0)
    assert list_schedule_makespan(g, d, 4) == 6.0
    assert barrier_makespan(g, d, 4) == 6.0


def test_breaking_the_barrier_overlaps_unbalanced_tiles():
    # op x: tiles of 1 and 3; op y: tiles of 3 and 1, each reading one tile of x.
    g = graph(["x", "x", "y", "y"], [(0, 2), (1, 3)])
    d = [1.0, 3.0, 3.0, 1.0]
    assert work_and_span(g, d) == (8.0, 4.0)
    assert barrier_makespan(g, d, 2) == 6.0  # max(1, 3) + max(3, 1)
    assert list_schedule_makespan(g, d, 2) == 4.0  # x0 -> y0 beside x1 -> y1
    assert list_schedule_makespan(g, d, 1) == barrier_makespan(g, d, 1) == 8.0


def test_explain_measures_and_simulates():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    report = aspen_torch.explain(model, torch.randn(2, 3, 32, 32), options={"strict": True}, measure_runs=2)
    s = report.scaling
    assert s is not None and s.work_ms > 0 and 0 < s.span_ms <= s.work_ms + 1e-9
    by_p = {p: (a, b) for p, a, b in s.rows}
    assert abs(by_p[1][0] - s.work_ms) < 1e-6 and abs(by_p[1][1] - s.work_ms) < 1e-6
    for aspen_ms, barrier_ms in by_p.values():  # bounds that hold for any schedule
        assert s.span_ms - 1e-9 <= aspen_ms <= s.work_ms + 1e-9
        assert s.span_ms - 1e-9 <= barrier_ms <= s.work_ms + 1e-9
    assert "scaling on paper" in str(report)
    assert simulate([], []).rows[0][1] == 0.0
