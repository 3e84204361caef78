"""Lowering: an aten partition (fx.GraphModule) -> TileGraph, one registered rule per node.

Edges come from index ranges: a tile depends on every tile that wrote a box
intersecting a box it reads. Buffers are written once (SSA), so read-after-write
edges are the only ones needed.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any, Optional, Sequence, Union

import torch
import torch.fx as fx

from .policy import TilePolicy
from .prepack import PackedWeights
from .registry import RULES, is_foldable
from .tile_graph import (
    Box,
    Buffer,
    EpilogueStep,
    PointwiseOp,
    Region,
    TensorRef,
    Tile,
    TileGraph,
    box_through_view,
    boxes_intersect,
    full_box,
    view_strides,
)


@dataclasses.dataclass(frozen=True)
class RuntimeInput:
    """A partition input that changes per call; `meta` is its fake value."""

    meta: torch.Tensor


# A partition input is either a RuntimeInput or a frozen tensor (weights, BN statistics).
PartitionInput = Union[RuntimeInput, torch.Tensor]
Value = Union[TensorRef, torch.Tensor, tuple, Any]


# Set by capture on a graph output whose traced strides are not eager's: eager's strides.
EAGER_STRIDE = "aspen_eager_stride"


def node_meta(node: fx.Node) -> torch.Tensor:
    """The fake value of a node's (first) output."""
    val = node.meta["val"]
    return val[0] if isinstance(val, (tuple, list)) else val


def _as_eager_returns(output: fx.Node) -> torch.Tensor:
    """An output's value with the strides eager gives it, where capture found them to differ
    (a fresh storage: the output shares none)."""
    meta = node_meta(output)
    stride = output.meta.get(EAGER_STRIDE)
    return meta if stride is None else torch.empty_strided(meta.shape, stride, dtype=meta.dtype, device="meta")


class LoweringContext:
    def __init__(self, graph_module: fx.GraphModule, policy: TilePolicy, packs: PackedWeights,
                 linear_kernel: str) -> None:
        self.graph_module = graph_module
        self.policy = policy
        self.packs = packs
        self._linear_kernel_option = linear_kernel
        self.tiles: list[Tile] = []
        self.values: dict[fx.Node, Value] = {}
        self._edges: set[tuple[int, int]] = set()
        self._writers: dict[Buffer, list[tuple[int, Box]]] = {}
        # Tiles whose outputs together are exactly a node's value, so a pointwise
        # consumer can run as their epilogue instead of as tiles of its own.
        self._fusible: dict[fx.Node, list[int]] = {}
        self._outputs: set[fx.Node] = set()
        # Keyed by id(); the tensor is kept in the value so the id stays unique.
        self._constant_buffers: dict[int, tuple[torch.Tensor, Buffer]] = {}

    @functools.cached_property
    def linear_kernel(self) -> str:
        """The library of packed linear tiles, 'onednn' or 'mkl'. Resolved on first need, so
        an 'auto' graph without a packed linear does not time the two (~0.1 s once a process)."""
        return self.packs.linear_kernel(self._linear_kernel_option)

    # --- values -------------------------------------------------------------------------
    def value(self, arg: Any) -> Value:
        if isinstance(arg, fx.Node):
            return self.values[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def constant(self, arg: Any) -> Optional[torch.Tensor]:
        v = self.value(arg)
        return v if isinstance(v, torch.Tensor) else None

    def ref(self, arg: Any) -> TensorRef:
        """The arg as a TensorRef; frozen tensors and Python scalars become constant buffers."""
        v = self.value(arg)
        if isinstance(v, TensorRef):
            return v
        if isinstance(v, (int, float, bool)):
            v = torch.tensor(float(v), dtype=torch.float32)
        if isinstance(v, torch.Tensor):
            return TensorRef.of(self.constant_buffer(v))
        raise TypeError(f"aspen: cannot use {type(v).__name__} as a tensor")

    def constant_buffer(self, tensor: torch.Tensor, name: str = "const") -> Buffer:
        key = id(tensor)
        if key not in self._constant_buffers:
            self._constant_buffers[key] = (tensor, Buffer(name, tuple(tensor.shape), tensor.dtype, constant=tensor))
        return self._constant_buffers[key][1]

    def new_buffer(self, node: fx.Node, shape: Optional[Sequence[int]] = None,
                   channels_last: Optional[bool] = None) -> TensorRef:
        meta = node_meta(node)
        shape = tuple(meta.shape if shape is None else shape)
        # Activations of 4-d ops live channels-last (NHWC), the layout oneDNN convolves fastest.
        buf = Buffer(node.name, shape, meta.dtype, channels_last=len(shape) == 4 if channels_last is None else channels_last)
        return TensorRef.of(buf)

    # --- tiles and edges ----------------------------------------------------------------
    def add_tile(self, tile: Tile, fusible_for: Optional[fx.Node] = None) -> int:
        index = len(self.tiles)
        self.tiles.append(tile)
        for region in tile.inputs:
            if region is not None:
                self._depend(index, region)
        written = tile.out.ref.buffer_box(tile.out.box)
        self._writers.setdefault(tile.out.ref.buffer, []).append((index, written))
        if fusible_for is not None:
            self._fusible.setdefault(fusible_for, []).append(index)
        return index

    def _writers_of(self, region: Region) -> list[int]:
        read = region.ref.buffer_box(region.box)
        return [writer for writer, written in self._writers.get(region.ref.buffer, ()) if boxes_intersect(read, written)]

    def _depend(self, index: int, region: Region) -> None:
        for writer in self._writers_of(region):
            if writer != index:
                self._edges.add((writer, index))

    def expand_to(self, ref: TensorRef, shape: Sequence[int]) -> TensorRef:
        shape = tuple(shape)
        return ref if ref.shape == shape else ref.then("expand", shape, shape)

    def try_fuse_pointwise(
        self, node: fx.Node, primary: Any, op: PointwiseOp, operand: Any = None, a: float = 0.0, b: float = 0.0
    ) -> bool:
        """Runs `node` as an epilogue of the tiles producing `primary`, if that is safe.

        Safe when those tiles write exactly `primary`'s value (or a reshape of it), nobody
        else reads that value (the epilogue overwrites it in place), the result has its
        shape, and an operand can be seen in the tiles' own coordinates.
        """
        if not isinstance(primary, fx.Node) or primary not in self._fusible:
            return False
        if len(primary.users) != 1 or primary in self._outputs:
            return False
        ref = self.values[primary]
        if not isinstance(ref, TensorRef) or tuple(node_meta(node).shape) != ref.shape:
            return False
        # Through reshapes and permutes an elementwise step still meets every element once;
        # a tensor operand is reshaped back to the tiles' shape, which a permute would not
        # allow (a Python scalar looks the same through any view).
        if any(step.op not in ("view", "permute") for step in ref.steps):
            return False
        if isinstance(operand, fx.Node) and any(step.op != "view" for step in ref.steps):
            return False
        regions = self._epilogue_regions(self._fusible[primary], ref, operand)
        if regions is None:
            return False
        self.absorb(primary, node, ref)
        self._append_epilogue(node, op, regions, a, b)
        return True

    def append_epilogue(self, node: fx.Node, op: PointwiseOp, operand: Any = None, a: float = 0.0,
                        b: float = 0.0) -> None:
        """Applies op(value, operand) in place at the end of every tile that writes `node`'s value."""
        regions = self._epilogue_regions(self._fusible[node], self.values[node], operand)
        assert regions is not None, "aspen: epilogue operand has no region matching the tile's output"
        self._append_epilogue(node, op, regions, a, b)

    def _epilogue_regions(self, tiles: list[int], value: TensorRef, operand: Any) -> Optional[list[Optional[Region]]]:
        """Per tile, the region of `operand` its epilogue reads (None entries without an
        operand), or None if some tile has no region matching its output or the operand
        is not yet computed when the tile runs."""
        if operand is None:
            return [None] * len(tiles)
        operand_ref = self.expand_to(self.ref(operand), value.shape)
        regions = [self._operand_region(operand_ref, value, self.tiles[i]) if self.tiles[i].out.ref != value
                   else Region(operand_ref, self.tiles[i].out.box) for i in tiles]
        if any(r is None for r in regions):
            return None
        # The operand must be complete before the tile starts. Tile indices are a
        # topological order (the planner relies on it), so a later tile's output (a
        # residual add whose shortcut conv comes after the main branch) would be a
        # backward edge; the tile's own output (conv(x) + conv(x)) is not there yet
        # when a conv tile reads the residual.
        if any(writer >= i for i, r in zip(tiles, regions) for writer in self._writers_of(r)):
            return None
        return regions

    def _append_epilogue(self, node: fx.Node, op: PointwiseOp, regions: list[Optional[Region]], a: float,
                         b: float) -> None:
        for index, region in zip(self._fusible[node], regions):
            tile = self.tiles[index]
            operand_index = None
            if region is not None:
                tile.inputs.append(region)
                operand_index = len(tile.inputs)
                self._depend(index, region)
                if region.ref.shape != tile.out.ref.shape:
                    # An operand seen in the value's shape (a [1, seq, hidden] parameter expanded
                    # over the batch, after a linear over [batch x seq] rows) has no dim of the
                    # tile's rows for row parts to cut: the tile runs whole.
                    tile.row_parts = 1
            tile.epilogue.append(EpilogueStep(op, operand_index, a, b))

    @staticmethod
    def _operand_region(operand_ref: TensorRef, value: TensorRef, tile: Tile) -> Optional[Region]:
        """The region of an epilogue operand (already expanded to the value's shape) that
        meets `tile`'s output element for element, when the value is a reshape of what the
        tile writes. Preferably the operand reshaped to the tile's shape; when no such view
        exists (attention's mask expanded over heads, against scores written as [batch x
        heads, ...]) the operand in the value's shape, over the tile's box mapped there: the
        kernel then views its output in that shape, which needs the box to map exactly and
        the output view to allow it."""
        seen = operand_ref.reshaped(tile.out.ref.shape)
        if seen is not None:
            return Region(seen, tile.out.box)
        if tile.out.ref.steps:
            return None
        box = box_through_view(tile.out.box, value.shape, tile.out.ref.shape)
        box_shape = [stop - start for start, stop in box]
        if math.prod(box_shape) != math.prod(stop - start for start, stop in tile.out.box):
            return None
        out_view = tile.out.ref.meta()[tuple(slice(start, stop) for start, stop in tile.out.box)]
        if view_strides(out_view.shape, out_view.stride(), box_shape) is None:
            return None
        return Region(operand_ref, box)

    def keep_fusible_through_view(self, source: Any, view: fx.Node) -> None:
        """A reshape, permute or alias that is the only reader of a fusible value stays
        fusible, so a pointwise op after it (a linear's GELU or residual add behind a view,
        attention's query scaling behind a permute) still runs as the producing tiles' epilogue."""
        if isinstance(source, fx.Node) and source in self._fusible and len(source.users) == 1 \
                and source not in self._outputs:
            self._fusible[view] = self._fusible.pop(source)

    def absorb(self, producer: fx.Node, consumer: fx.Node, value: Value) -> None:
        """Records that the tiles of `producer` also compute `consumer` (an epilogue, a folded batch norm)."""
        self.values[consumer] = value
        if producer in self._fusible:
            self._fusible[consumer] = self._fusible.pop(producer)

    def _select_output(self, node: fx.Node) -> None:
        """One output of a multi-output op (values or indices): of the op's tiles, those that
        write it stay fusible for it, so an epilogue on the values leaves the indices alone."""
        producer, index = node.args
        value = self.value(producer)[index]
        self.values[node] = value
        if producer in self._fusible and isinstance(value, TensorRef):
            self._fusible[node] = [i for i in self._fusible[producer] if self.tiles[i].out.ref.buffer == value.buffer]

    # --- driver -------------------------------------------------------------------------
    def run(self, inputs: Sequence[PartitionInput]) -> TileGraph:
        graph = self.graph_module.graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(inputs):
            raise AssertionError(f"aspen: partition has {len(placeholders)} inputs, got {len(inputs)}")
        output_node = next(n for n in graph.nodes if n.op == "output")
        outs = output_node.args[0]
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        self._outputs = {o for o in outs if isinstance(o, fx.Node)}

        input_refs, input_meta = [], []
        for node, inp in zip(placeholders, inputs):
            if isinstance(inp, RuntimeInput):
                meta = inp.meta
                # The caller's layout, so the copy in is a plain copy; the first tiles to read a
                # 4-d input (a CNN's stem) convert their own part to channels-last in parallel.
                channels_last = meta.dim() == 4 and not meta.is_contiguous() and \
                    meta.is_contiguous(memory_format=torch.channels_last)
                buf = Buffer(node.name, tuple(meta.shape), meta.dtype, channels_last=channels_last)
                self.values[node] = TensorRef.of(buf)
                input_refs.append(self.values[node])
                input_meta.append(meta)
            else:
                self.values[node] = inp

        for node in graph.nodes:
            if node.op != "call_function" or node in self.values:  # absorbed by an earlier rule
                continue
            if is_foldable(node, lambda n: isinstance(self.values.get(n), torch.Tensor)):
                self.values[node] = self._evaluate(node)
            elif _has_only_empty_outputs(node):
                # Buffers, and no tiles, for outputs with no elements; readers of them get no edges.
                refs = buffers_for_outputs(node)
                self.values[node] = tuple(refs) if isinstance(node.meta["val"], (tuple, list)) else refs[0]
            elif node.target is operator.getitem:
                self._select_output(node)
            else:
                self.values[node] = RULES.rule(node.target).lower(node, self)

        output_refs = [self.ref(o) for o in outs]
        output_meta = [_as_eager_returns(o) for o in outs]
        return TileGraph(self.tiles, sorted(self._edges), input_refs, output_refs, output_meta, input_meta)

    def _evaluate(self, node: fx.Node) -> Any:
        """Constant folding: an op whose inputs are all frozen runs once, at compile time."""
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        with torch.no_grad():
            return node.target(*args, **kwargs)


def _has_only_empty_outputs(node: fx.Node) -> bool:
    """Every tensor the node produces has no elements (a batch of 0): nothing to compute."""
    val = node.meta.get("val")
    vals = val if isinstance(val, (tuple, list)) else [val]
    tensors = [v for v in vals if isinstance(v, torch.Tensor)]
    return bool(tensors) and len(tensors) == len(vals) and all(v.numel() == 0 for v in tensors)


def buffers_for_outputs(node: fx.Node, channels_last: Optional[bool] = None) -> list[TensorRef]:
    """A new buffer per tensor the node produces (one, or an op's values and indices);
    4-d ones channels-last unless told otherwise, as LoweringContext.new_buffer does."""
    val = node.meta["val"]
    vals = list(val) if isinstance(val, (tuple, list)) else [val]
    names = [node.name] if len(vals) == 1 else [f"{node.name}_{i}" for i in range(len(vals))]
    return [TensorRef.of(Buffer(name, tuple(v.shape), v.dtype,
                                channels_last=v.dim() == 4 if channels_last is None else channels_last))
            for name, v in zip(names, vals)]


def lower_partition(graph_module: fx.GraphModule, inputs: Sequence[PartitionInput], policy: TilePolicy,
                    packs: PackedWeights, linear_kernel: str) -> TileGraph:
    """`linear_kernel`: the library of packed linear tiles, 'onednn', 'mkl' or 'auto' (the
    faster on this CPU: PackedWeights.linear_kernel)."""
    return LoweringContext(graph_module, policy, packs, linear_kernel).run(inputs)
