"""Capture: dynamo graph -> aten inference graph (AOTAutograd) with its frozen inputs identified."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.fx as fx
from torch._decomp import core_aten_decompositions
from torch._dynamo.source import is_from_unspecialized_param_buffer_source
from torch._functorch.aot_autograd import aot_module_simplified, make_boxed_func

from .apu.registry import RULES
from .errors import AspenError


@dataclasses.dataclass
class CapturedGraph:
    """An aten-level inference graph. `frozen` maps placeholder positions to the real
    parameter or buffer tensors behind them: those are compile-time constants."""

    graph_module: fx.GraphModule
    frozen: dict[int, torch.Tensor]


def decomposition_table() -> dict:
    """Core ATen decompositions, minus the ops aspen tiles natively."""
    tiled = RULES.tiled_ops()
    return {op: fn for op, fn in core_aten_decompositions().items() if op not in tiled}


def parameter_or_buffer_inputs(graph_module: fx.GraphModule, example_inputs: Sequence[object]) -> list[bool]:
    """Which dynamo graph inputs are module parameters or buffers. Read from dynamo's
    placeholder metadata, which is only there while dynamo calls the backend."""
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    flags = []
    for placeholder, example in zip(placeholders, example_inputs):
        grapharg = placeholder.meta.get("grapharg")
        flags.append(isinstance(example, torch.nn.Parameter) or (
            grapharg is not None and is_from_unspecialized_param_buffer_source(grapharg.source)))
    return flags


def capture(graph_module: fx.GraphModule, example_inputs: Sequence[object], frozen_inputs: Sequence[bool],
            compile_captured: Callable[[CapturedGraph], Callable]) -> Callable:
    """Runs AOTAutograd's inference path and hands the aten graph to `compile_captured`.
    `frozen_inputs` (from parameter_or_buffer_inputs) marks the inputs to treat as constants."""
    # aot_module_simplified lifts the module's own parameters and buffers ahead of the inputs.
    lifted = [*dict(graph_module.named_parameters(remove_duplicate=False)).values(),
              *dict(graph_module.named_buffers(remove_duplicate=False)).values()]
    flat = [*lifted, *example_inputs]
    frozen_flags = [True] * len(lifted) + list(frozen_inputs)

    def inference_compiler(aten_graph: fx.GraphModule, _fake_inputs: list) -> Callable:
        count = sum(1 for n in aten_graph.graph.nodes if n.op == "placeholder")
        if count != len(flat):
            raise AspenError(f"aspen: AOTAutograd produced {count} graph inputs for {len(flat)} inputs "
                             "(input mutation or tensor subclass?)")
        frozen = {i: t for i, (t, f) in enumerate(zip(flat, frozen_flags)) if f and isinstance(t, torch.Tensor)}
        return make_boxed_func(compile_captured(CapturedGraph(aten_graph, frozen)))

    def training_compiler(_graph: fx.GraphModule, _inputs: list) -> Callable:
        raise AspenError("aspen compiles inference graphs only")

    return aot_module_simplified(graph_module, list(example_inputs), fw_compiler=training_compiler,
                                 inference_compiler=inference_compiler, decompositions=decomposition_table())
