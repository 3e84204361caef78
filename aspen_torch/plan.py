"""Planning: TileGraph -> Plan. Allocates every buffer once and turns each Region into a view."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from . import _C
from .apu.tile_graph import Buffer, Region, TileGraph, apply_view_steps


@dataclasses.dataclass
class Plan:
    program: "_C.Program"
    input_buffers: list[torch.Tensor]  # a call copies its inputs here
    output_views: list[torch.Tensor]  # a call copies its outputs from here
    buffers: list[torch.Tensor]  # keeps every activation buffer alive with the program
    activation_bytes: int


def _allocate(buf: Buffer) -> torch.Tensor:
    if buf.constant is not None:
        return buf.constant
    fmt = torch.channels_last if buf.channels_last else torch.contiguous_format
    return torch.empty(buf.shape, dtype=buf.dtype, memory_format=fmt)


class _Views:
    def __init__(self) -> None:
        self.storage: dict[Buffer, torch.Tensor] = {}

    def buffer(self, buf: Buffer) -> torch.Tensor:
        if buf not in self.storage:
            self.storage[buf] = _allocate(buf)
        return self.storage[buf]

    def region(self, region: Optional[Region]) -> Optional[torch.Tensor]:
        if region is None:
            return None
        tensor = self.buffer(region.ref.buffer)
        if not region.ref.steps and all(
            start == 0 and stop == size for (start, stop), size in zip(region.box, region.ref.shape)
        ):
            return tensor  # whole buffer: also the only form an opaque prepacked weight allows
        tensor = apply_view_steps(tensor, region.ref.steps)
        return tensor[tuple(slice(start, stop) for start, stop in region.box)]

    def arguments(self, args: Any) -> Any:
        """An ATen call's arguments with every Region, also inside lists, turned into its view."""
        if isinstance(args, Region):
            return self.region(args)
        if isinstance(args, (list, tuple)):
            return [self.arguments(a) for a in args]
        return args


def plan(graph: TileGraph) -> Plan:
    views = _Views()
    input_buffers = [views.buffer(ref.buffer) for ref in graph.input_refs]
    tiles = []
    for tile in graph.tiles:
        tensors = [views.region(r) for r in tile.args]
        epilogue = [(int(s.op), -1 if s.operand is None else s.operand, s.a, s.b) for s in tile.epilogue]
        entry = (int(tile.kind), tensors, list(tile.ints), epilogue, f"{tile.node_name} ({tile.op_label})")
        if tile.aten_call is not None:
            call = tile.aten_call
            schema = call.op._schema
            entry += ((schema.name, schema.overload_name, views.arguments(call.args), call.result_index),)
        tiles.append(entry)
    program = _C.make_program(tiles, graph.edges)
    output_views = [apply_view_steps(views.buffer(ref.buffer), ref.steps) for ref in graph.output_refs]
    activation_bytes = sum(
        t.numel() * t.element_size() for b, t in views.storage.items() if b.constant is None
    )
    return Plan(program, input_buffers, output_views, list(views.storage.values()), activation_bytes)
