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
             "args": {"tile": e.tile, "program": hex(e.program), "op": e.op}}
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
        for program, tile, label, dse, start, end in runtime.stop_trace():
            node, op = _parse_label(label)
            recorded.events.append(TileEvent(program, tile, node, op, dse, start, end))
        recorded.events.sort(key=lambda e: e.start_ns)
        if path is not None:
            recorded.write_chrome_trace(path)
