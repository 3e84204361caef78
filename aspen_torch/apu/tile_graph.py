"""The APU's output: buffers, tiles that read and write boxes of them, and the edges between tiles.

Nothing here holds real memory for activations: the planner (plan.py) allocates
buffers and turns every Region into a tensor view.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Optional, Sequence

import torch

Box = tuple[tuple[int, int], ...]  # [start, stop) per dimension


def full_box(shape: Sequence[int]) -> Box:
    return tuple((0, int(s)) for s in shape)


def boxes_intersect(a: Box, b: Box) -> bool:
    return all(a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in zip(a, b))


def box_numel(box: Box) -> int:
    n = 1
    for start, stop in box:
        n *= stop - start
    return n


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
    graph_input: Optional[int] = None  # index among the partition's runtime inputs


@dataclasses.dataclass(frozen=True)
class ViewStep:
    """A view applied to a buffer before boxing: ('view', shape), ('expand', shape),
    ('permute', dims) or ('narrow', (dim, start, length))."""

    op: str
    arg: tuple[int, ...]


def apply_view_steps(tensor: torch.Tensor, steps: Sequence[ViewStep]) -> torch.Tensor:
    for step in steps:
        tensor = tensor.narrow(*step.arg) if step.op == "narrow" else getattr(tensor, step.op)(step.arg)
    return tensor


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
        return TensorRef(self.buffer, self.steps + (ViewStep(op, tuple(arg)),), tuple(shape))

    def buffer_box(self, box: Box) -> Box:
        """The buffer box a read of `box` of this ref touches (index-range math, conservative for reshapes)."""
        if not self.steps:
            return box
        if all(s.op == "expand" for s in self.steps):
            # A broadcast dimension of size 1 is read whole; others map one to one.
            offset = len(self.shape) - len(self.buffer.shape)
            return tuple(
                (0, 1) if size == 1 else box[offset + d] for d, size in enumerate(self.buffer.shape)
            )
        if all(s.op == "narrow" for s in self.steps):
            mapped = list(box)
            for step in self.steps:
                dim, start, _ = step.arg
                mapped[dim] = (mapped[dim][0] + start, mapped[dim][1] + start)
            return tuple(mapped)
        return full_box(self.buffer.shape)


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


@dataclasses.dataclass(eq=False)
class Tile:
    kind: TileKind
    out: Region
    inputs: list[Optional[Region]]  # args 1.. of the kernel; None for an absent optional
    ints: tuple[int, ...]
    epilogue: list[EpilogueStep]
    op_label: str  # aten op of the node this tile computes
    node_name: str
    flops: float = 0.0

    @property
    def args(self) -> list[Optional[Region]]:
        return [self.out, *self.inputs]


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
