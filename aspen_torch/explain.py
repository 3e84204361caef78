"""aspen_torch.explain: compile a model once and report what aspen made of it."""
from __future__ import annotations

import collections
import functools
import statistics
from typing import Any, Mapping, Optional

import torch

from .backend import aspen_backend
from .report import CompileReport
from .scaling import simulate
from .trace import trace


def explain(model: torch.nn.Module, *example_inputs: Any, options: Optional[Mapping[str, Any]] = None,
            measure_runs: int = 0, **example_kwargs: Any) -> CompileReport:
    """Compiles `model` with aspen, runs it once on the example inputs and returns the
    CompileReport: fallback_ops, num_tiles, num_edges, tiles_per_op (print() it for a summary).

    With measure_runs > 0 it also times every tile over that many traced calls and fills
    `report.scaling`: work, span and simulated makespans for 1-64 DSEs against an
    operator-barrier schedule of the same tiles (see aspen_torch/scaling.py)."""
    report = CompileReport(keep_tile_graphs=True)
    compiled = torch.compile(model, backend=functools.partial(aspen_backend, options=options, report=report))
    with torch.no_grad():
        compiled(*example_inputs, **example_kwargs)
        if measure_runs > 0:
            samples: dict[tuple[int, int], list[int]] = {}
            for _ in range(measure_runs):
                with trace() as recorded:
                    compiled(*example_inputs, **example_kwargs)
                per_tile: dict[tuple[int, int], int] = collections.Counter()
                for e in recorded.events:  # a tile run in row parts has an event per part
                    per_tile[e.program, e.tile] += e.end_ns - e.start_ns
                for key, ns in per_tile.items():
                    samples.setdefault(key, []).append(ns)
            durations = [[statistics.median(samples.get((pid, t), [0])) for t in range(len(g.tiles))]
                         for g, pid in zip(report.tile_graphs, report.program_ids)]
            report.scaling = simulate(report.tile_graphs, durations)
    return report
