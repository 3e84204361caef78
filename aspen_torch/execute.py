"""Execution: a compiled partition as a callable that validates inputs and runs a Plan on the shared runtime."""
from __future__ import annotations

import threading

import torch

from .apu.tile_graph import TileGraph
from .errors import AspenInputError
from .output_layout import OutputLayout
from .plan import Plan, plan
from .requests import current_request_is_urgent
from .runtime import SHARED_RUNTIME


class CompiledPartition(torch.nn.Module):
    """Runs one aspen partition. Called by the outer fx graph in place of the fused submodule."""

    def __init__(self, name: str, tile_graph: TileGraph, first_plan: Plan, single_output: bool):
        super().__init__()
        self.name = name
        self._single_output = single_output
        self._tile_graph = tile_graph
        self._input_specs = [(tuple(m.shape), m.dtype, m.device) for m in tile_graph.input_meta]
        self._output_layout = OutputLayout(tile_graph)
        # A call holds a plan (its activation buffers) alone; concurrent calls get plans of
        # their own, planned on first need and kept for reuse. Weights are shared by all.
        self._free_plans: list[Plan] = [first_plan]
        self._plans_lock = threading.Lock()

    def _take_plan(self) -> Plan:
        with self._plans_lock:
            if self._free_plans:
                return self._free_plans.pop()
        with torch.no_grad():
            return plan(self._tile_graph)

    def _give_back(self, taken: Plan) -> None:
        with self._plans_lock:
            self._free_plans.append(taken)

    @property
    def relus_fused(self) -> bool:
        """Whether its conv tiles fuse their relus into oneDNN: false once a call may have
        lost a NaN to them (then they run as NaN-keeping passes; docs/design.md)."""
        with self._plans_lock:
            return all(p.program.relus_fused for p in self._free_plans)

    def _check_inputs(self, args: tuple) -> None:
        if len(args) != len(self._input_specs):
            raise AspenInputError(f"aspen partition {self.name}: expected {len(self._input_specs)} inputs, got {len(args)}")
        for i, (arg, (shape, dtype, device)) in enumerate(zip(args, self._input_specs)):
            if not isinstance(arg, torch.Tensor):
                raise AspenInputError(f"aspen partition {self.name}: input {i} is {type(arg).__name__}, expected a tensor")
            if arg.device != device:
                raise AspenInputError(f"aspen partition {self.name}: input {i} is on {arg.device}, compiled for {device}")
            if arg.dtype != dtype:
                raise AspenInputError(f"aspen partition {self.name}: input {i} has dtype {arg.dtype}, compiled for {dtype}")
            if tuple(arg.shape) != shape:
                raise AspenInputError(
                    f"aspen partition {self.name}: input {i} has shape {tuple(arg.shape)}, compiled for {shape}")

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check_inputs(args)
        runtime = SHARED_RUNTIME.get()
        taken = self._take_plan()
        try:
            outputs, copy_out = self._output_layout.make(args, taken.output_views)
            runtime.run(taken.program, current_request_is_urgent(), copy_in=list(zip(args, taken.input_buffers)),
                        copy_out=copy_out)
        finally:
            self._give_back(taken)
        return outputs[0] if self._single_output else tuple(outputs)

