"""What a compile produced: tiles, edges, fallbacks. Filled by the backend, read by explain()."""
from __future__ import annotations

import collections
import dataclasses

from typing import Optional

from .apu.tile_graph import TileGraph
from .scaling import ScalingReport


@dataclasses.dataclass
class CompileReport:
    fallback_ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    tiles_per_op: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    num_tiles: int = 0
    num_edges: int = 0
    num_partitions: int = 0
    num_graphs: int = 0
    activation_bytes: int = 0
    # explain() keeps every tile graph for inspection; a compiled model does not: a tile graph
    # holds its constants (folded, packed weights), and a model recompiled for new weights or
    # shapes would keep each compile's copy alive for as long as dynamo keeps the graph.
    keep_tile_graphs: bool = False
    tile_graphs: list[TileGraph] = dataclasses.field(default_factory=list)
    program_ids: list[int] = dataclasses.field(default_factory=list)  # the first plan's, per tile graph
    # Calls at an input shape or weight set not compiled (yet), run in eager (options.recompiles).
    cold_calls: int = 0
    scaling: Optional[ScalingReport] = None  # explain(..., measure_runs=N) fills it

    def record_partition(self, tile_graph: TileGraph, activation_bytes: int, program_id: int) -> None:
        self.num_partitions += 1
        self.num_tiles += len(tile_graph.tiles)
        self.num_edges += len(tile_graph.edges)
        self.tiles_per_op.update(tile_graph.tiles_per_op())
        self.activation_bytes += activation_bytes
        if self.keep_tile_graphs:
            self.tile_graphs.append(tile_graph)
            self.program_ids.append(program_id)

    def __str__(self) -> str:
        lines = [
            f"aspen: {self.num_graphs} graph(s), {self.num_partitions} aspen partition(s), "
            f"{self.num_tiles} tiles, {self.num_edges} edges, "
            f"{self.activation_bytes / 2**20:.1f} MiB of activation buffers",
            "tiles per op:",
        ]
        lines += [f"  {op:<48} {n:>6}" for op, n in sorted(self.tiles_per_op.items())]
        if self.fallback_ops:
            lines.append("ops run in eager (no aspen rule or unsupported form):")
            lines += [f"  {op:<48} {n:>6}" for op, n in sorted(self.fallback_ops.items())]
        else:
            lines.append("no op fell back to eager")
        if self.cold_calls:
            lines.append(f"{self.cold_calls} call(s) at input shapes or weight sets not compiled yet ran in eager "
                         "(option recompiles)")
        if self.scaling is not None:
            lines += ["scaling on paper (measured tile times, simulated schedules):", str(self.scaling)]
        return "\n".join(lines)
