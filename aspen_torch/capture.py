"""Capture: dynamo graph -> aten inference graph (AOTAutograd) with its frozen inputs identified."""
from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import weakref
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._decomp import core_aten_decompositions
from torch._dynamo.source import is_from_unspecialized_param_buffer_source
from torch._functorch._aot_autograd.schemas import OutputType
from torch._functorch.aot_autograd import aot_module_simplified
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.multiprocessing.reductions import StorageWeakRef

from . import _C
from .apu.lower import EAGER_STRIDE
from .apu.registry import RULES
from .decompositions import extra_decompositions
from .errors import AspenError
from .fast_paths import FAST_PATH_DECOMPOSITIONS
from .recompile import LruPlans, RecompilePolicy


@dataclasses.dataclass
class CapturedGraph:
    """An aten-level inference graph. `frozen` maps placeholder positions to the real
    parameter or buffer tensors behind them: those are compile-time constants."""

    graph_module: fx.GraphModule
    frozen: dict[int, torch.Tensor]


def decomposition_table() -> dict:
    """Core ATen decompositions, minus the ops aspen tiles natively, plus PyTorch's fused
    inference fast paths taken apart (fast_paths.py) and more of torch's decompositions
    (decompositions.py)."""
    return _decompositions_except(RULES.tiled_ops())


@functools.cache
def _decompositions_except(tiled: frozenset) -> dict:
    # Once per process (per rule set): torch's table materializes ~950 decompositions on
    # every .items(), ~0.05-0.1 s of each graph's compile.
    core = {op: fn for op, fn in core_aten_decompositions().items() if op not in tiled}
    return {**core, **extra_decompositions(), **FAST_PATH_DECOMPOSITIONS}


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


@dataclasses.dataclass
class _WeightSet:
    """A plan compiled for one set of frozen tensors. It holds them weakly, so that a model
    deleted (or a notebook cell run again) frees its weights and their plan, and their
    storages strongly, so that no storage of theirs is freed and reused at the same address
    while the set is kept."""

    compiled: Callable
    tensors: list[weakref.ref]
    versions: list[int]  # -1 for inference tensors, which keep no version
    storages: list[torch.UntypedStorage]

    def outdated(self) -> bool:
        """True once a tensor died or was written in place: versions only grow, so the set
        can never be called again."""
        for ref, version in zip(self.tensors, self.versions):
            tensor = ref()
            if tensor is None or (version >= 0 and tensor._version != version):
                return True
        return False


class FrozenInputsGuard:
    """The boxed callable handed back to AOTAutograd. Dynamo reuses a compiled graph for
    another module instance of the same shapes and does not see in-place weight updates,
    while aspen bakes weights into its plans; so every call checks that the frozen inputs
    are the tensors, at the versions and over the storages, that it was compiled for, and
    compiles the kept aten graph again for others: at once while fewer than MAX_WEIGHT_SETS
    are kept, else when hot (RecompilePolicy: an ensemble of more instances than that, called
    in turn, would otherwise compile on every call), evicting the least recently used. A set
    whose tensors died or were written in place is dropped, so fine-tuning with compiled
    evaluations, or models created anew, keep one set's memory. Writes through `param.data`
    bump no version and are not seen (as with inductor's freezing), nor are writes to
    inference tensors (weights created under torch.inference_mode)."""

    _boxed_call = True  # AOTAutograd passes the arguments as one list
    MAX_WEIGHT_SETS = 8

    def __init__(self, aten_graph: fx.GraphModule, positions: list[int], tensors: list[torch.Tensor],
                 compile_captured: Callable[[CapturedGraph], Callable], policy: RecompilePolicy) -> None:
        # Partitioning rewrites the graph it is given; keep a pristine copy for recompiles
        # (and for calls run in eager). AOTAutograd calls under fake mode, where copying a
        # real tensor constant (GPT-2's causal mask) would make a fake tensor point at real storage.
        with unset_fake_temporarily():
            self._aten_graph = copy.deepcopy(aten_graph)
        self._positions = positions
        self._compile_captured = compile_captured
        self._policy = policy
        self._sets: LruPlans[_WeightSet] = LruPlans(self.MAX_WEIGHT_SETS)
        # Untimed: the policy prices recompiles from weight sets compiled later (a recompile
        # skips AOTAutograd's trace, which this first compile came after).
        self._compile_for(_C.frozen_signature(tensors, list(range(len(tensors)))), tensors, aten_graph)

    def _compile_for(self, key: bytes, tensors: list[torch.Tensor], aten_graph: fx.GraphModule) -> Callable:
        # Plans get aliases: if they held the parameters themselves, the weak references
        # below would never see them die.
        with unset_fake_temporarily():
            aliases = [t.detach() for t in tensors]
        compiled = self._compile_captured(CapturedGraph(aten_graph, dict(zip(self._positions, aliases))))
        guard = weakref.ref(self)

        def drop_set(_dead: weakref.ref) -> None:
            # Runs wherever the last reference went, maybe inside a method of the guard on
            # this thread: LruPlans.discard takes no lock.
            alive = guard()
            if alive is not None:
                alive._sets.discard(key)

        self._sets.put(key, _WeightSet(compiled, [weakref.ref(t, drop_set) for t in tensors],
                                       [-1 if t.is_inference() else t._version for t in tensors],
                                       [t.untyped_storage() for t in tensors]))
        return compiled

    def _find(self, key: bytes) -> Optional[Callable]:
        entry = self._sets.get(key)
        return entry.compiled if entry is not None else None

    def __call__(self, args: list) -> Any:
        key = _C.frozen_signature(args, self._positions)
        fn = self._find(key)
        if fn is None:
            self._sets.discard_where(_WeightSet.outdated)
            if self._policy.claim_compile(key, self._sets.has_room()):
                tensors = [args[i] for i in self._positions]
                fn = self._policy.compile(key, lambda: self._find(key),
                                          lambda: self._compile_for(key, tensors, copy.deepcopy(self._aten_graph)))
        if fn is None:
            return self._policy.run_in_eager(key, lambda: self._aten_graph(*args))
        return fn(*args)


def _forward_metadata() -> Optional[Any]:
    """AOTAutograd's ViewAndMutationMeta of the graph being compiled."""
    context = torch._guards.TracingContext.try_get()
    return context.fw_metadata if context is not None else None


def _mutated_inputs(metadata: Optional[Any]) -> set[int]:
    """Graph inputs the forward writes (batch norm's running statistics in training mode, a
    counter buffer): AOTAutograd copies the new values back after each call, so they change
    every call and are runtime inputs, not constants (frozen, every call would recompile)."""
    if metadata is None:
        return set()
    return {i for i, info in enumerate(metadata.input_info) if info.mutates_data or info.mutates_metadata}


def _eager_output_strides(graph_module: fx.GraphModule) -> list[Optional[tuple[int, ...]]]:
    """The strides of dynamo's graph outputs, traced from the ops the user called."""
    output = next(n for n in graph_module.graph.nodes if n.op == "output")
    values = [n.meta.get("example_value") if isinstance(n, fx.Node) else None
              for n in pytree.tree_leaves(output.args[0])]
    return [v.stride() if isinstance(v, torch.Tensor) else None for v in values]


def _mark_eager_output_strides(aten_graph: fx.GraphModule, eager_strides: list[Optional[tuple[int, ...]]],
                               metadata: Optional[Any]) -> None:
    """Some of torch's decompositions return other strides than the op they replace (baddbmm
    takes its bias's, a transposed bias's): a user output computed fresh, used by nothing
    else and by no other output, gets `EAGER_STRIDE`, the strides eager's op gives, which
    its output copy (output_layout.py) then takes, as inductor keeps them."""
    if metadata is None:
        return
    outputs = next(n for n in aten_graph.graph.nodes if n.op == "output").args[0]
    first = len(metadata.tokens) + metadata.num_mutated_inp_runtime_indices
    user_outputs = list(outputs[first:first + len(metadata.output_info)])
    if len(user_outputs) != len(eager_strides):
        return
    storages = collections.Counter(StorageWeakRef(o.meta["val"].untyped_storage()) for o in outputs
                                   if isinstance(o, fx.Node) and isinstance(o.meta.get("val"), torch.Tensor))
    for node, info, stride in zip(user_outputs, metadata.output_info, eager_strides):
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        if (stride is None or not isinstance(val, torch.Tensor) or info.output_type != OutputType.non_alias
                or len(node.users) != 1 or storages[StorageWeakRef(val.untyped_storage())] != 1):
            continue
        if not all(isinstance(x, int) for x in (*stride, *val.shape, *val.stride())) \
                or tuple(val.stride()) == tuple(stride):
            continue  # symbolic sizes: left as traced
        if _dense(tuple(val.shape), tuple(stride)):
            node.meta[EAGER_STRIDE] = tuple(stride)


def _dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """The strides lay the elements out without gaps or overlaps, in some order of the dims."""
    expected = 1
    for size, step in sorted((p for p in zip(shape, stride) if p[0] != 1), key=lambda p: p[1]):
        if step != expected:
            return False
        expected *= size
    return True


def capture(graph_module: fx.GraphModule, example_inputs: Sequence[object], frozen_inputs: Sequence[bool],
            compile_captured: Callable[[CapturedGraph], Callable], policy: RecompilePolicy) -> Callable:
    """Runs AOTAutograd's inference path and hands the aten graph to `compile_captured`.
    `frozen_inputs` (from parameter_or_buffer_inputs) marks the inputs to treat as constants;
    `policy` decides when other weight sets compile."""
    # aot_module_simplified lifts the module's own parameters and buffers ahead of the inputs.
    lifted = [*dict(graph_module.named_parameters(remove_duplicate=False)).values(),
              *dict(graph_module.named_buffers(remove_duplicate=False)).values()]
    flat = [*lifted, *example_inputs]
    frozen_flags = [True] * len(lifted) + list(frozen_inputs)
    eager_strides = _eager_output_strides(graph_module)

    def inference_compiler(aten_graph: fx.GraphModule, _fake_inputs: list) -> Callable:
        # Side-effecting ops (linalg's error checks) are threaded by effect tokens: one more
        # graph input each, ahead of the others, which AOTAutograd passes as None.
        metadata = _forward_metadata()
        tokens = len(metadata.tokens) if metadata is not None else 0
        count = sum(1 for n in aten_graph.graph.nodes if n.op == "placeholder")
        if count != tokens + len(flat):
            raise AspenError(f"aspen: AOTAutograd produced {count} graph inputs for {len(flat)} inputs "
                             f"and {tokens} effect token(s) (input mutation or tensor subclass?)")
        mutated = _mutated_inputs(metadata)
        _mark_eager_output_strides(aten_graph, eager_strides, metadata)
        positions = [tokens + i for i, (t, f) in enumerate(zip(flat, frozen_flags))
                     if f and isinstance(t, torch.Tensor) and i not in mutated]
        return FrozenInputsGuard(aten_graph, positions, [flat[i - tokens] for i in positions], compile_captured, policy)

    def training_compiler(_graph: fx.GraphModule, _inputs: list) -> Callable:
        raise AspenError("aspen compiles inference graphs only")

    return aot_module_simplified(graph_module, list(example_inputs), fw_compiler=training_compiler,
                                 inference_compiler=inference_compiler, decompositions=decomposition_table())
