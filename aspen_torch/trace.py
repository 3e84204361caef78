"""Per-tile execution traces: which DSE ran which tile when. Off unless inside `trace()`."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Iterator, Optional, Union

from .runtime import SHARED_RUNTIME


@dataclasses.dataclass(frozen=True)
class TileEvent:
    program: int  # id of the compiled partition's program (one per tenant graph)
    tile: int
    part: int  # -1: the whole tile; else the row part a DSE ran (csrc/open_tiles.h)
    node: str  # the aten graph node the tile computes
    op: str
    dse: int
    start_ns: int
    end_ns: int


@dataclasses.dataclass
class Trace:
    events: list[TileEvent] = dataclasses.field(default_factory=list)

    @property
    def span_ns(self) -> int:
        return max(e.end_ns for e in self.events) - min(e.start_ns for e in self.events) if self.events else 0

    def busy_ns_per_dse(self) -> dict[int, int]:
        busy: dict[int, int] = collections.Counter()
        for e in self.events:
            busy[e.dse] += e.end_ns - e.start_ns
        return dict(sorted(busy.items()))

    def time_ns_per_op(self) -> dict[str, int]:
        per_op: dict[str, int] = collections.Counter()
        for e in self.events:
            per_op[e.op] += e.end_ns - e.start_ns
        return dict(per_op.most_common())

    def to_chrome_trace(self) -> dict:
        """Chrome trace / Perfetto JSON: one row per DSE, one slice per tile."""
        origin = min((e.start_ns for e in self.events), default=0)
        return {"displayTimeUnit": "ms", "traceEvents": [
            {"name": e.node, "cat": e.op, "ph": "X", "pid": 0, "tid": e.dse,
             "ts": (e.start_ns - origin) / 1e3, "dur": (e.end_ns - e.start_ns) / 1e3,
             "args": {"tile": e.tile, "part": e.part, "program": hex(e.program), "op": e.op}}
            for e in self.events] + [
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": d, "args": {"name": f"DSE {d}"}}
            for d in sorted({e.dse for e in self.events})]}

    def write_chrome_trace(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_chrome_trace()))


def _parse_label(label: str) -> tuple[str, str]:
    node, _, rest = label.partition(" (")
    return node, rest[:-1] if rest.endswith(")") else rest


@contextlib.contextmanager
def trace(path: Optional[Union[str, Path]] = None) -> Iterator[Trace]:
    """Records every tile the shared runtime runs inside the block; writes a Chrome trace
    (open it in Perfetto or chrome://tracing) to `path` if given."""
    runtime = SHARED_RUNTIME.get()
    recorded = Trace()
    runtime.start_trace()
    try:
        yield recorded
    finally:
        for program, tile, part, label, dse, start, end in runtime.stop_trace():
            node, op = _parse_label(label)
            recorded.events.append(TileEvent(program, tile, part, node, op, dse, start, end))
        recorded.events.sort(key=lambda e: e.start_ns)
        if path is not None:
            recorded.write_chrome_trace(path)


def plot_trace(trace_or_path: Union[Trace, str, Path], out_png: Union[str, Path], color_by: str = "op") -> None:
    """Draws a per-DSE Gantt chart of a Trace (or of a Chrome trace JSON written by `trace`),
    one bar per tile, coloured by op or by tenant (program). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if color_by not in ("op", "tenant"):
        raise ValueError(f"color_by must be 'op' or 'tenant', got {color_by!r}")
    if isinstance(trace_or_path, Trace):
        rows = [(e.dse, e.start_ns / 1e6, (e.end_ns - e.start_ns) / 1e6, e.op, hex(e.program))
                for e in trace_or_path.events]
    else:
        data = json.loads(Path(trace_or_path).read_text())
        rows = [(e["tid"], e["ts"] / 1e3, e["dur"] / 1e3, e["cat"], e["args"]["program"])
                for e in data["traceEvents"] if e.get("ph") == "X"]
    if not rows:
        raise ValueError("the trace has no tiles")
    origin = min(r[1] for r in rows)
    keys = sorted({r[3] if color_by == "op" else r[4] for r in rows})
    cmap = plt.get_cmap("tab20")
    colors = {k: cmap(i % 20) for i, k in enumerate(keys)}
    dses = sorted({r[0] for r in rows})
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.6 * len(dses)))
    for dse, start, duration, op, program in rows:
        key = op if color_by == "op" else program
        ax.barh(dse, duration, left=start - origin, height=0.8, color=colors[key], linewidth=0)
    ax.set_yticks(dses, [f"DSE {d}" for d in dses])
    ax.set_xlabel("ms")
    ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in keys]
    ax.legend(handles, [k.replace("aten.", "") for k in keys], loc="upper center", bbox_to_anchor=(0.5, -0.35),
              ncol=4, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
