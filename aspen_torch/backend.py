"""The torch.compile backend: orchestrates capture -> rewrite -> partition -> APU lowering -> plan -> execution."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .apu import TilePolicy, lower_partition
from .apu.prepack import SHARED_PACKS, PackedWeights
from .capture import CapturedGraph, capture, parameter_or_buffer_inputs
from .errors import AspenUnsupportedError
from .execute import CompiledPartition
from .options import AspenOptions
from .partition import partition
from .plan import plan
from .recompile import LruPlans, RecompilePolicy
from .report import CompileReport
from .rewrite import recompose_activations
from .runtime import SHARED_RUNTIME

log = logging.getLogger("aspen_torch")


def compile_captured(captured: CapturedGraph, options: AspenOptions, report: CompileReport,
                     packs: PackedWeights) -> Callable:
    runtime = SHARED_RUNTIME.get(options.num_dses)
    policy = TilePolicy(runtime.num_dses, options.tiles_per_dse, options.min_tile_flops)
    partitioned = partition(recompose_activations(captured), options.strict)
    report.num_graphs += 1
    report.fallback_ops.update(partitioned.fallback_ops)
    for part in partitioned.partitions:
        # AOTAutograd calls us under fake mode; folding and prepacking need real tensors.
        with unset_fake_temporarily(), torch.no_grad():
            tile_graph = lower_partition(part.graph_module, part.inputs, policy, packs, options.linear_kernel)
            compiled_plan = plan(tile_graph)
        outputs = next(n for n in part.graph_module.graph.nodes if n.op == "output").args[0]
        compiled = CompiledPartition(part.name, tile_graph, compiled_plan,
                                     single_output=not isinstance(outputs, (tuple, list)))
        setattr(partitioned.graph_module, part.name, compiled)
        report.record_partition(tile_graph, compiled_plan.activation_bytes, compiled_plan.program.id)
    partitioned.graph_module.recompile()
    return partitioned.graph_module


@contextlib.contextmanager
def _older_objects_set_aside_from_gc():
    """While aspen captures and compiles, the objects alive before (dynamo's, millions for a
    ResNet-50) sit in the garbage collector's permanent generation: each whole-heap
    collection the compile's allocations trigger walked them all, ~0.15 s apiece at ResNet-50
    B32. Afterwards they go back as they were. A process that froze objects itself (a
    server before fork) is left alone."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def capture_and_compile(graph_module: fx.GraphModule, example_inputs: Sequence[Any], frozen_inputs: list[bool],
                        options: AspenOptions, report: CompileReport, packs: PackedWeights) -> Callable:
    """A graph of static shapes, captured and compiled; other weight sets compile as its
    RecompilePolicy says."""
    with _older_objects_set_aside_from_gc():
        return capture(graph_module, example_inputs, frozen_inputs,
                       lambda captured: compile_captured(captured, options, report, packs),
                       RecompilePolicy(options.recompiles_always, "weight set", report))


def _has_symbolic_shapes(example_inputs: Sequence[Any]) -> bool:
    return any(isinstance(x, torch.SymInt) or (isinstance(x, torch.Tensor) and any(
        isinstance(s, torch.SymInt) for s in x.shape)) for x in example_inputs)


def _read_by_item(graph_module: fx.GraphModule) -> list[int]:
    """Positions of inputs the graph reads only through .item(): Python numbers that dynamo
    passes as 0-d tensors (module floats such as batch norm's eps under dynamic=True)."""
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    return [i for i, p in enumerate(placeholders)
            if p.users and all(u.op == "call_method" and u.target == "item" for u in p.users)]


def _with_numbers(graph_module: fx.GraphModule, numbers: dict[int, Any]) -> fx.GraphModule:
    """A copy of the graph in which the .item() of input i is the Python number numbers[i]."""
    specialized = fx.GraphModule(graph_module, copy.deepcopy(graph_module.graph))
    placeholders = [n for n in specialized.graph.nodes if n.op == "placeholder"]
    for i, number in numbers.items():
        for item in list(placeholders[i].users):
            for user in list(item.users):
                user.args = fx.node.map_arg(user.args, lambda a, item=item: number if a is item else a)
                user.kwargs = fx.node.map_arg(user.kwargs, lambda a, item=item: number if a is item else a)
            specialized.graph.erase_node(item)
    specialized.recompile()
    return specialized


class _PerShapeCompiler:
    """Dynamo sent a graph with symbolic sizes, or Python numbers as tensors; aspen plans
    static tiles, so it compiles once per concrete input signature seen at call time
    (shapes, and the values of those numbers): the first at once, later ones when they are
    hot (RecompilePolicy), running dynamo's graph in eager until then. The plans share
    packed weights; the least recently used beyond MAX_PLANS are dropped, so a model served
    at ever new sequence lengths holds bounded memory."""

    MAX_PLANS = 16

    def __init__(self, graph_module: fx.GraphModule, frozen_inputs: list[bool], numbers: list[int],
                 options: AspenOptions, report: CompileReport, packs: PackedWeights) -> None:
        self._graph_module = graph_module
        self._frozen_inputs = frozen_inputs
        self._numbers = numbers  # positions from _read_by_item
        # Plans per shape share one packing per weight: oneDNN's, which serves any row count.
        self._options = dataclasses.replace(options, linear_kernel="onednn") \
            if options.linear_kernel == "auto" else options
        self._report = report
        self._packs = packs
        self._compiled: LruPlans[Callable] = LruPlans(self.MAX_PLANS)
        self._policy = RecompilePolicy(options.recompiles_always, "input shape", report)

    def __call__(self, *args: Any) -> Any:
        numbers = {i: args[i].item() for i in self._numbers}
        key = tuple((tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in args)
        key += tuple(numbers.items())
        fn = self._compiled.get(key)
        if fn is None and self._policy.claim_compile(key, free_slot=False):
            fn = self._policy.compile(key, lambda: self._compiled.get(key), lambda: self._compile(key, args, numbers))
        if fn is None:
            return self._policy.run_in_eager(key, lambda: self._graph_module(*args))
        return fn(*args)

    def _compile(self, key: tuple, args: tuple, numbers: dict[int, Any]) -> Callable:
        fn = capture_and_compile(_with_numbers(self._graph_module, numbers), args, self._frozen_inputs, self._options,
                                 self._report, self._packs)
        self._compiled.put(key, fn)
        return fn


def aspen_backend(graph_module: fx.GraphModule, example_inputs: Sequence[Any],
                  options: Optional[Mapping[str, Any]] = None, *, mode: Optional[str] = None,
                  report: Optional[CompileReport] = None) -> Callable:
    """torch.compile(model, backend="aspen", options={"num_dses": ..., "strict": ...})."""
    if mode not in (None, "default"):
        raise ValueError(f"aspen: torch.compile's mode={mode!r} is inductor's; aspen has no modes "
                         "(its settings are options={...}: see the README)")
    opts = AspenOptions.from_dict(options)
    report = report if report is not None else CompileReport()
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs):
        reason = "inputs require grad with grad mode on (training); aspen compiles inference only: " \
                 "call the model under torch.no_grad() or torch.inference_mode()"
        if opts.strict:
            raise AspenUnsupportedError([("autograd", reason, "")])
        log.warning("aspen: graph runs in eager: %s", reason)
        report.fallback_ops["<whole graph: autograd>"] += 1
        return graph_module.forward
    frozen_inputs = parameter_or_buffer_inputs(graph_module, example_inputs)
    numbers = _read_by_item(graph_module)
    if _has_symbolic_shapes(example_inputs) or numbers:
        return _PerShapeCompiler(graph_module, frozen_inputs, numbers, opts, report, SHARED_PACKS)
    return capture_and_compile(graph_module, example_inputs, frozen_inputs, opts, report, SHARED_PACKS)
