"""Partitioning: the aten graph -> an outer graph whose aspen-capable regions are fused submodules.

Unsupported ops stay in the outer graph and run in eager on the calling thread.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import operator
from typing import Optional

import torch
import torch.fx as fx
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from .apu.lower import PartitionInput, RuntimeInput
from .apu.registry import GETITEM_OF_AN_EAGER_OP, RULES, is_foldable, op_name
from .capture import CapturedGraph
from .errors import AspenUnsupportedError

log = logging.getLogger("aspen_torch")


@dataclasses.dataclass
class Partition:
    name: str  # attribute of the outer graph module holding the fused submodule
    graph_module: fx.GraphModule
    inputs: list[PartitionInput]


@dataclasses.dataclass
class PartitionedGraph:
    graph_module: fx.GraphModule
    partitions: list[Partition]
    fallback_ops: dict[str, int]


def _tensor_constants(graph_module: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Tensors the graph reads by get_attr: constants AOTAutograd lifted out of the
    forward (a `torch.tensor(...)` literal, which then reaches ops through lift_fresh_copy)."""
    constants = {}
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            value = graph_module
            for atom in node.target.split("."):
                value = getattr(value, atom)
            if isinstance(value, torch.Tensor):
                constants[node.name] = value
    return constants


def _frozen_nodes(graph_module: fx.GraphModule, frozen: dict[int, torch.Tensor]) -> set[fx.Node]:
    """Frozen placeholders, tensor constants and every node computable from them alone at compile time."""
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    constants = _tensor_constants(graph_module)
    result = {placeholders[i] for i in frozen} | {
        n for n in graph_module.graph.nodes if n.op == "get_attr" and n.name in constants}
    for node in graph_module.graph.nodes:
        if is_foldable(node, result.__contains__) or (
                node.target is operator.getitem and node.args[0] in result):
            result.add(node)
    return result


def where(node: fx.Node) -> str:
    """The user's source line that produced `node`, from dynamo's stack trace."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    return lines[-1] if lines else ""


class _RegistrySupport(OperatorSupportBase):
    def __init__(self, reasons: dict[fx.Node, Optional[str]]) -> None:
        self._reasons = reasons

    def is_node_supported(self, submodules, node: fx.Node) -> bool:
        return node.op == "call_function" and self._reasons.get(node) is None


def _is_view(node: fx.Node) -> bool:
    """An op returning views of its first argument (view, slice, permute, split's pieces)."""
    if node.op == "call_function" and node.target is operator.getitem:
        return _is_view(node.args[0])
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and any(
        r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def _keep_storage_for_eager_as_strided(gm: fx.GraphModule, reasons: dict[fx.Node, Optional[str]]) -> None:
    """An as_strided left to eager indexes its input's storage, which only eager's own views
    have: a tensor crossing from an aspen partition is a fresh one. So the views between it
    and the op that made their storage (or a graph input) run in eager too."""
    for node in gm.graph.nodes:
        if node.target is not torch.ops.aten.as_strided.default or reasons.get(node) is None:
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and _is_view(source):
            reasons[source] = reasons[source] or "a view whose storage an as_strided running in eager reads"
            source = source.args[0]
    for node in gm.graph.nodes:  # the other pieces of a split now run in eager
        if node.target is operator.getitem and reasons.get(node.args[0]) is not None:
            reasons[node] = reasons[node] or GETITEM_OF_AN_EAGER_OP


def partition(captured: CapturedGraph, strict: bool) -> PartitionedGraph:
    gm = captured.graph_module
    frozen_nodes = _frozen_nodes(gm, captured.frozen)
    reasons = {n: RULES.unsupported_reason(n, frozen_nodes.__contains__)
               for n in gm.graph.nodes if n.op == "call_function"}
    unsupported = [(n, r) for n, r in reasons.items() if r is not None]
    if strict and unsupported:
        raise AspenUnsupportedError([(op_name(n.target), r, where(n)) for n, r in unsupported])
    _keep_storage_for_eager_as_strided(gm, reasons)
    unsupported = [(n, r) for n, r in reasons.items() if r is not None]
    for n, r in unsupported:
        log.warning("aspen: %s (%s) runs in eager: %s", op_name(n.target), n.name, r)
    fallback_ops = dict(collections.Counter(op_name(n.target) for n, _ in unsupported))

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    # Fusing copies the graph's nodes, so frozen inputs and constants are found again by name.
    frozen_by_name = {placeholders[i].name: t for i, t in captured.frozen.items()} | _tensor_constants(gm)
    partitioner = CapabilityBasedPartitioner(gm, _RegistrySupport(reasons), allows_single_node_partition=True)
    fused = partitioner.fuse_partitions(partitioner.propose_partitions())

    partitions = []
    for node in list(fused.graph.nodes):
        if node.op != "call_module":
            continue
        frozen = [a.op in ("placeholder", "get_attr") and a.name in frozen_by_name for a in node.args]
        inputs = [frozen_by_name[a.name] if f else RuntimeInput(a.meta["val"]) for a, f in zip(node.args, frozen)]
        # Frozen inputs are baked into the plan; the call passes only what changes per call.
        node.args = tuple(a for a, f in zip(node.args, frozen) if not f)
        partitions.append(Partition(node.target, getattr(fused, node.target), inputs))
    fused.graph.lint()
    return PartitionedGraph(fused, partitions, fallback_ops)
