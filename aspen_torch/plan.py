"""Planning: TileGraph -> Plan. Allocates memory once (buffers with disjoint lifetimes share
slots, see memory_plan.py) and turns each Region into a view."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torch._prims_common import suggest_memory_format

from . import _C
from .apu.tile_graph import AtenCall, Buffer, Region, TileGraph, apply_view_steps
from .memory_plan import MemoryPlan, plan_memory


@dataclasses.dataclass
class Plan:
    program: "_C.Program"
    input_buffers: list[torch.Tensor]  # a call copies its inputs here
    output_views: list[torch.Tensor]  # a call copies its outputs from here
    buffers: list[torch.Tensor]  # keeps every activation buffer alive with the program
    activation_bytes: int


def _out_variant(op: torch._ops.OpOverload) -> Optional[torch._ops.OpOverload]:
    """The op's out= overload taking the same arguments plus `out`, if it has one."""
    name = "out" if op._overloadname == "default" else f"{op._overloadname}_out"
    out_op = getattr(op.overloadpacket, name, None)
    if out_op is None or len(op._schema.returns) != 1:
        return None
    functional = [a.name for a in op._schema.arguments]
    return out_op if [a.name for a in out_op._schema.arguments] == functional + ["out"] else None


def _aten_call(call: AtenCall, out: torch.Tensor, views: "_Views") -> tuple:
    """(op name, overload, arguments, result index) for the C++ tile. An out= overload writes
    a contiguous output view in place; some ATen out= kernels (softmax) mishandle strided ones,
    and some (reflection padding) restride `out` to a channels-last input's layout, which
    scrambles a view: those tiles call the functional op and copy."""
    op, args = call.op, views.arguments(call.args)
    out_op = _out_variant(op) if call.result_index == 0 and out.is_contiguous() \
        and all(suggest_memory_format(t) == torch.contiguous_format for t in _tensors_in(args)) else None
    if out_op is not None:
        op, args = out_op, args + [out]
    return (op._schema.name, op._schema.overload_name, args, call.result_index)


def _tensors_in(args: Any) -> list[torch.Tensor]:
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, (list, tuple)):
        return [t for a in args for t in _tensors_in(a)]
    return []


class _Views:
    def __init__(self, memory: MemoryPlan) -> None:
        self.memory = memory
        self.slots = [torch.empty(size, dtype=torch.uint8) for size in memory.slot_bytes]
        self.storage: dict[Buffer, torch.Tensor] = {}

    def buffer(self, buf: Buffer) -> torch.Tensor:
        if buf not in self.storage:
            self.storage[buf] = self._allocate(buf)
        return self.storage[buf]

    def _allocate(self, buf: Buffer) -> torch.Tensor:
        if buf.constant is not None:
            return buf.constant
        strides = buf.meta().stride()
        slot = self.memory.slot_of.get(buf)
        if slot is None:
            return torch.empty_strided(buf.shape, strides, dtype=buf.dtype)
        return self.slots[slot].view(buf.dtype).as_strided(buf.shape, strides)

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
    memory = plan_memory(graph)
    views = _Views(memory)
    input_buffers = [views.buffer(ref.buffer) for ref in graph.input_refs]
    tiles = []
    for tile in graph.tiles:
        tensors = [views.region(r) for r in tile.args]
        epilogue = [(int(s.op), -1 if s.operand is None else s.operand, s.a, s.b) for s in tile.epilogue]
        call = _aten_call(tile.aten_call, tensors[0], views) if tile.aten_call is not None else None
        tiles.append((int(tile.kind), tensors, list(tile.ints), epilogue, f"{tile.node_name} ({tile.op_label})", call,
                      (tile.row_parts, tile.split_dims())))
    program = _C.make_program(tiles, sorted(set(graph.edges) | set(memory.extra_edges)))
    output_views = [apply_view_steps(views.buffer(ref.buffer), ref.steps) for ref in graph.output_refs]
    activation_bytes = sum(memory.slot_bytes) + sum(
        t.numel() * t.element_size() for b, t in views.storage.items()
        if b.constant is None and b not in memory.slot_of)
    return Plan(program, input_buffers, output_views, list(views.storage.values()) + views.slots,
                activation_bytes)
