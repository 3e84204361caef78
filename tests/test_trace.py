"""Tracing: every tile of a traced call is recorded once, on a real DSE, as well-formed Chrome trace JSON."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from helpers import compile_strict

import aspen_torch


def test_trace_records_every_tile(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()
    x = torch.randn(4, 3, 32, 32)
    report = aspen_torch.explain(model, x, options={"strict": True})
    compiled = compile_strict(model)
    path = tmp_path / "run.json"
    with torch.no_grad():
        compiled(x)
        with aspen_torch.trace(path) as recorded:
            compiled(x)
        compiled(x)  # not recorded
    assert len(recorded.events) == report.num_tiles
    assert {e.op for e in recorded.events} == set(report.tiles_per_op)
    assert all(e.end_ns >= e.start_ns for e in recorded.events)
    num_dses = aspen_torch.runtime_stats()["num_dses"]
    assert {e.dse for e in recorded.events} <= set(range(num_dses))
    assert sum(recorded.busy_ns_per_dse().values()) <= recorded.span_ns * num_dses
    data = json.loads(path.read_text())
    slices = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == report.num_tiles
    assert all({"name", "cat", "ts", "dur", "tid"} <= set(e) for e in slices)


def test_plot_trace_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    compiled = compile_strict(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        compiled(x)
        with aspen_torch.trace(tmp_path / "t.json") as recorded:
            compiled(x)
    for source, color_by in [(recorded, "op"), (tmp_path / "t.json", "tenant")]:
        out = tmp_path / f"{color_by}.png"
        aspen_torch.plot_trace(source, out, color_by=color_by)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        aspen_torch.plot_trace(recorded, tmp_path / "x.png", color_by="dse")
