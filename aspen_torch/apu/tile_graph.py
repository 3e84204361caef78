"""The APU's output: buffers, tiles that read and write boxes of them, and the edges between tiles.

Nothing here holds real memory for activations: the planner (plan.py) allocates
buffers and turns every Region into a tensor view.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import Optional, Sequence

import torch

Box = tuple[tuple[int, int], ...]  # [start, stop) per dimension


def full_box(shape: Sequence[int]) -> Box:
    return tuple((0, int(s)) for s in shape)


def boxes_intersect(a: Box, b: Box) -> bool:
    # A plain loop: called per (read region, writer) pair while lowering, 2-3x faster than all() of a generator.
    for (a0, a1), (b0, b1) in zip(a, b):
        if a0 >= b1 or b0 >= a1:
            return False
    return True


class TileKind(enum.IntEnum):
    """Mirrors aspen::TileKind in csrc/tile_spec.h."""

    CONV2D = 0
    MAX_POOL2D = 1
    AVG_POOL2D = 2
    MEAN = 3
    LINEAR = 4
    POINTWISE = 5
    COPY = 6
    RECORD = 7
    THREAD_PROBE = 8
    ATEN_OP = 9
    PACKED_LINEAR = 10
    SAFE_SOFTMAX = 11
    ATTENTION = 12
    MKL_LINEAR = 13


class PointwiseOp(enum.IntEnum):
    """Mirrors aspen::PointwiseOp in csrc/tile_spec.h."""

    ADD = 0
    SUB = 1
    MUL = 2
    DIV = 3
    RELU = 4
    CLAMP = 5
    SILU = 6
    SIGMOID = 7
    HARDSWISH = 8
    TANH = 9
    RSUB = 10
    ABS = 11
    NEG = 12
    EXP = 13
    SQRT = 14
    RSQRT = 15
    GELU = 16


@dataclasses.dataclass(eq=False)
class Buffer:
    """One preallocated tensor. `constant` is set for weights folded at compile time."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    channels_last: bool = False
    constant: Optional[torch.Tensor] = None

    def meta(self) -> torch.Tensor:
        """A meta tensor with the layout the planner gives this buffer (a constant keeps its own)."""
        if self.constant is not None:
            return torch.empty_strided(self.shape, self.constant.stride(), dtype=self.dtype, device="meta")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return torch.empty(self.shape, dtype=self.dtype, device="meta", memory_format=fmt)


@dataclasses.dataclass(frozen=True)
class ViewStep:
    """A zero-copy view: ('view', shape), ('expand', shape), ('permute', dims),
    ('narrow', (dim, start, length)), ('slice', (dim, start, length, step)) or
    ('select', (dim, index)); `shape` is the result's."""

    op: str
    arg: tuple[int, ...]
    shape: tuple[int, ...]


def view_strides(shape: Sequence[int], strides: Sequence[int], new_shape: Sequence[int]) -> Optional[list[int]]:
    """The strides of a view of a tensor (shape, strides) as new_shape (same element count),
    or None where no view exists; ATen's rule, computed here because a meta tensor's view
    under the Python dispatcher that AOTAutograd leaves on while a backend compiles also
    accepts views that merge dims across a gap beside a dim of size 1."""
    if not shape:
        return [1] * len(new_shape)
    if math.prod(shape) == 0:
        return list(torch.empty(new_shape, device="meta").stride())
    new_strides = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    base, tensor_numel, view_numel = strides[-1], 1, 1
    for d in range(len(shape) - 1, -1, -1):
        tensor_numel *= shape[d]
        # A chunk of dims contiguous with each other ends here (dims of size 1 never break one).
        if d == 0 or (shape[d - 1] != 1 and strides[d - 1] != tensor_numel * base):
            while view_d >= 0 and (view_numel < tensor_numel or new_shape[view_d] == 1):
                new_strides[view_d] = view_numel * base
                view_numel *= new_shape[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if d > 0:
                base, tensor_numel, view_numel = strides[d - 1], 1, 1
    return new_strides if view_d == -1 else None


def apply_view_steps(tensor: torch.Tensor, steps: Sequence[ViewStep]) -> torch.Tensor:
    for step in steps:
        if step.op in ("narrow", "select"):
            tensor = getattr(tensor, step.op)(*step.arg)
        elif step.op == "slice":
            dim, start, length, stride = step.arg
            tensor = tensor.narrow(dim, start, (length - 1) * stride + 1)[(slice(None),) * dim + (slice(None, None, stride),)]
        else:
            tensor = getattr(tensor, step.op)(step.arg)
    return tensor


def _reshape_groups(before: Sequence[int], after: Sequence[int]) -> Optional[list[tuple[list[int], list[int]]]]:
    """Pairs minimal runs of dims with equal products, e.g. (6, 4) -> (2, 3, 4) gives
    [([0], [0, 1]), ([1], [2])]. None for shapes with a zero."""
    if 0 in before or 0 in after:
        return None
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(before) and j < len(after):
        bi, aj, pb, pa = [i], [j], before[i], after[j]
        i, j = i + 1, j + 1
        while pb != pa:
            if pb < pa:
                bi.append(i)
                pb *= before[i]
                i += 1
            else:
                aj.append(j)
                pa *= after[j]
                j += 1
        groups.append((bi, aj))
    if not groups:
        groups.append(([], []))
    groups[-1][0].extend(range(i, len(before)))  # trailing size-1 dims
    groups[-1][1].extend(range(j, len(after)))
    return groups


def _flat_range_box(lo: int, hi: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """The smallest box over `sizes` holding row-major flat indices [lo, hi)."""
    if not sizes:
        return []
    inner = 1
    for s in sizes[1:]:
        inner *= s
    first, last = lo // inner, (hi - 1) // inner
    if first == last:
        return [(first, first + 1)] + _flat_range_box(lo % inner, (hi - 1) % inner + 1, sizes[1:])
    return [(first, last + 1)] + [(0, s) for s in sizes[1:]]


def box_through_view(box: Box, before: Sequence[int], after: Sequence[int]) -> Box:
    """Maps a box of a reshaped view back to the smallest covering box of its source."""
    groups = _reshape_groups(before, after)
    if groups is None:
        return full_box(before)
    mapped: list[tuple[int, int]] = [(0, s) for s in before]
    for before_dims, after_dims in groups:
        lo, hi, stride = 0, 0, 1
        for d in reversed(after_dims):
            lo += box[d][0] * stride
            hi += (box[d][1] - 1) * stride
            stride *= after[d]
        for d, r in zip(before_dims, _flat_range_box(lo, hi + 1, [before[d] for d in before_dims])):
            mapped[d] = r
    return tuple(mapped)


def _box_through_step(box: Box, step: ViewStep, before: tuple[int, ...]) -> Box:
    """The box of the step's input that a read of `box` of its output touches."""
    if step.op == "view":
        return box_through_view(box, before, step.shape)
    if step.op == "permute":
        mapped: list = [None] * len(before)
        for out_dim, in_dim in enumerate(step.arg):
            mapped[in_dim] = box[out_dim]
        return tuple(mapped)
    if step.op == "expand":
        offset = len(step.shape) - len(before)
        return tuple((0, 1) if size == 1 else box[offset + d] for d, size in enumerate(before))
    if step.op == "narrow":
        dim, start, _ = step.arg
        return tuple((b0 + start, b1 + start) if d == dim else (b0, b1) for d, (b0, b1) in enumerate(box))
    if step.op == "slice":  # the covering box: rows between the strided ones are not read
        dim, start, _, stride = step.arg
        return tuple((start + b0 * stride, start + (b1 - 1) * stride + 1) if d == dim else (b0, b1)
                     for d, (b0, b1) in enumerate(box))
    if step.op == "select":
        dim, index = step.arg
        return tuple(box[:dim]) + ((index, index + 1),) + tuple(box[dim:])
    raise AssertionError(f"unknown view step {step.op}")


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """How a graph value sits on a buffer: the buffer seen through zero-copy view steps."""

    buffer: Buffer
    steps: tuple[ViewStep, ...] = ()
    shape: tuple[int, ...] = ()

    @staticmethod
    def of(buffer: Buffer) -> "TensorRef":
        return TensorRef(buffer, (), buffer.shape)

    def then(self, op: str, arg: Sequence[int], shape: Sequence[int]) -> "TensorRef":
        return TensorRef(self.buffer, self.steps + (ViewStep(op, tuple(arg), tuple(shape)),), tuple(shape))

    def meta(self) -> torch.Tensor:
        """A meta tensor with the strides the planner will give this ref, to test views at compile time."""
        return apply_view_steps(self.buffer.meta(), self.steps)

    def reshaped(self, shape: Sequence[int]) -> Optional["TensorRef"]:
        """This ref reshaped to `shape` as a zero-copy view, or None if no such view exists."""
        shape = tuple(shape)
        meta = self.meta()
        if math.prod(shape) != meta.numel() or view_strides(meta.shape, meta.stride(), shape) is None:
            return None
        return self.then("view", shape, shape)

    def buffer_box(self, box: Box) -> Box:
        """The buffer box that a read of `box` of this ref touches: index-range math
        backwards through every view step, exact or a covering superset."""
        shapes = [self.buffer.shape] + [s.shape for s in self.steps]
        for step, before in zip(reversed(self.steps), reversed(shapes[:-1])):
            box = _box_through_step(box, step, before)
        return box


@dataclasses.dataclass(frozen=True)
class Region:
    ref: TensorRef
    box: Box


@dataclasses.dataclass(frozen=True)
class EpilogueStep:
    op: PointwiseOp
    operand: Optional[int]  # index into Tile.args (0 is the output), or None
    a: float = 0.0
    b: float = 0.0


@dataclasses.dataclass(frozen=True)
class AtenCall:
    """Any ATen op called on views: `args` in schema order, Regions where tensors go."""

    op: torch._ops.OpOverload
    args: tuple
    result_index: int = 0


@dataclasses.dataclass(eq=False)
class Tile:
    kind: TileKind
    out: Region
    inputs: list[Optional[Region]]  # args 1.. of the kernel; None for an absent optional
    ints: tuple[int, ...]
    epilogue: list[EpilogueStep]
    op_label: str  # aten op of the node this tile computes
    node_name: str
    aten_call: Optional[AtenCall] = None
    # Row parts that idle DSEs may take from a preempted DSE (csrc/tile_parts.h): parts cut
    # the output's dim 0, and with it dim 0 of the inputs listed in `row_inputs` and of every
    # epilogue operand (those meet the output element for element).
    row_parts: int = 1
    row_inputs: tuple[int, ...] = ()

    @property
    def args(self) -> list[Optional[Region]]:
        return [self.out, *self.inputs]

    def split_dims(self) -> list[int]:
        """Per arg, the dim that row parts cut (-1: read whole)."""
        split = {0, *(1 + i for i in self.row_inputs), *(s.operand for s in self.epilogue if s.operand is not None)}
        return [0 if i in split else -1 for i in range(len(self.args))]


@dataclasses.dataclass
class TileGraph:
    tiles: list[Tile]
    edges: list[tuple[int, int]]
    input_refs: list[TensorRef]  # one per partition runtime input, in order
    output_refs: list[TensorRef]
    output_meta: list[torch.Tensor]  # fake values: shape, dtype and eager strides of each output
    input_meta: list[torch.Tensor]

    def tiles_per_op(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tiles:
            counts[t.op_label] = counts.get(t.op_label, 0) + 1
        return counts
