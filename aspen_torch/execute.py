"""Execution: a compiled partition as a callable that validates inputs and runs its Plan on the shared runtime."""
from __future__ import annotations

import threading

import torch

from .errors import AspenInputError
from .plan import Plan
from .requests import current_request_is_urgent
from .runtime import SHARED_RUNTIME


class CompiledPartition(torch.nn.Module):
    """Runs one aspen partition. Called by the outer fx graph in place of the fused submodule."""

    def __init__(self, name: str, plan: Plan, input_meta: list[torch.Tensor], output_meta: list[torch.Tensor],
                 single_output: bool):
        super().__init__()
        self.name = name
        self._single_output = single_output
        self.plan = plan
        self._input_specs = [(tuple(m.shape), m.dtype, m.device) for m in input_meta]
        self._output_specs = [(tuple(m.shape), tuple(m.stride()), m.dtype) for m in output_meta]
        # The plan's buffers are shared by its calls, so calls of one partition take turns.
        self._lock = threading.Lock()

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
        with self._lock, torch.no_grad():
            for buf, arg in zip(self.plan.input_buffers, args):
                buf.copy_(arg)
            runtime.run(self.plan.program, current_request_is_urgent())
            # Fresh outputs with eager's strides: the buffers are reused by the next call.
            outputs = tuple(
                torch.empty_strided(shape, stride, dtype=dtype).copy_(view)
                for (shape, stride, dtype), view in zip(self._output_specs, self.plan.output_views)
            )
        return outputs[0] if self._single_output else outputs
