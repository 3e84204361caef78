"""The one registry of APU lowering rules, keyed by aten op overload (or, for another
library's op, by its name).

The partitioner's allow-list, the decomposition table and the lowering all
read this registry, so a rule added here is everything needed to tile an op.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.fx as fx

if TYPE_CHECKING:
    from .lower import LoweringContext

# Why a getitem runs in eager: the op returning its tuple does (also after partition.py moves one there).
GETITEM_OF_AN_EAGER_OP = "getitem of an op aspen does not run"

# Dtypes a partition may carry; rules with float32 kernels narrow this with `float32_only`.
SUPPORTED_DTYPES = (torch.float32, torch.int64, torch.int32, torch.bool)

LowerFn = Callable[[fx.Node, "LoweringContext"], object]
# A check sees the node and which nodes are frozen (known at compile time).
CheckFn = Callable[[fx.Node, Callable[[fx.Node], bool]], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Rule:
    target: object
    lower: LowerFn
    check: Optional[CheckFn]


def _tensor_values(node: fx.Node) -> list:
    """The node's tensor inputs and the outputs that something uses (not, e.g., unused pooling indices)."""
    vals = [n.meta.get("val") for n in node.all_input_nodes]
    out = node.meta.get("val")
    if isinstance(out, (tuple, list)):
        used = {u.args[1] for u in node.users if u.target is operator.getitem}
        vals += [v for i, v in enumerate(out) if i in used]
    else:
        vals.append(out)
    return [v for v in vals if isinstance(v, torch.Tensor)]


def float32_only(node: fx.Node) -> Optional[str]:
    for v in _tensor_values(node):
        if v.dtype != torch.float32:
            return f"dtype {v.dtype} (this op is tiled for torch.float32)"
    return None


def is_foldable(node: fx.Node, is_frozen: Callable[[fx.Node], bool]) -> bool:
    """Computable once at compile time: inputs all frozen (or none), and not random."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded in node.target.tags:
        return False
    return all(is_frozen(n) for n in node.all_input_nodes)


class RuleRegistry:
    def __init__(self) -> None:
        self._rules: dict[object, Rule] = {}
        # Rules for every op carrying a tag (e.g. all pointwise ops), after exact rules.
        self._tag_rules: dict[torch.Tag, Rule] = {}

    def register(self, *targets: object, check: Optional[CheckFn] = None) -> Callable[[LowerFn], LowerFn]:
        def wrap(fn: LowerFn) -> LowerFn:
            for target in targets:
                if target in self._rules:
                    raise ValueError(f"aspen: two APU rules for {target}")
                self._rules[target] = Rule(target, fn, check)
            return fn

        return wrap

    def register_tag(self, tag: torch.Tag, check: Optional[CheckFn] = None) -> Callable[[LowerFn], LowerFn]:
        def wrap(fn: LowerFn) -> LowerFn:
            self._tag_rules[tag] = Rule(tag, fn, check)
            return fn

        return wrap

    def find(self, target: object) -> Optional[Rule]:
        rule = self._rules.get(target)
        if rule is None and isinstance(target, torch._ops.OpOverload):
            # Ops of other libraries are registered by name ("transformers.grouped_mm_fallback.default"):
            # they exist only once that library is imported.
            rule = self._rules.get(str(target)) or next(
                (r for tag, r in self._tag_rules.items() if tag in target.tags), None)
        return rule

    def rule(self, target: object) -> Rule:
        rule = self.find(target)
        assert rule is not None, f"no APU rule for {target}"
        return rule

    def tiled_ops(self) -> frozenset:
        return frozenset(t for t in self._rules if isinstance(t, torch._ops.OpOverload))

    def unsupported_reason(self, node: fx.Node, is_frozen: Callable[[fx.Node], bool]) -> Optional[str]:
        """None when aspen can tile `node`, else why not, in words."""
        if node.op != "call_function":
            return None
        if is_foldable(node, is_frozen):
            return None  # folded to a constant at compile time
        if node.target is operator.getitem:
            src = node.args[0]
            return None if isinstance(src, fx.Node) and self.unsupported_reason(src, is_frozen) is None \
                else GETITEM_OF_AN_EAGER_OP
        if node.target is torch.ops.higher_order.with_effects:
            return f"side effect of {node.args[1]}, kept in order by an effect token"
        rule = self.find(node.target)
        if rule is None:
            return "no APU rule for this op"
        for v in _tensor_values(node):
            if v.dtype not in SUPPORTED_DTYPES:
                return f"dtype {v.dtype} (aspen tiles {', '.join(map(str, SUPPORTED_DTYPES))})"
            if v.device.type != "cpu":
                return f"device {v.device} (aspen runs on the CPU)"
            if any(not isinstance(s, int) for s in v.shape):
                return "symbolic shape"
        return rule.check(node, is_frozen) if rule.check else None


RULES = RuleRegistry()


def op_name(target: object) -> str:
    if target is operator.getitem:
        return "getitem"
    return str(target)
