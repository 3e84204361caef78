"""How a compiled partition hands out its outputs so that they alias as eager's do.

Outputs are fresh tensors with eager's strides (the plan's buffers are reused by the next
call). Where eager's outputs are views of one intermediate (`y` and `y.flatten(1)`), they
get one fresh storage between them, so a write through one shows in the others; aspen may
have computed them in separate buffers (a layout change turns a view into a copy), and
each is copied into its place, overlapping elements with equal values. An output that is a
view of a partition input is that view of the caller's tensor, not a copy.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from .apu.tile_graph import TileGraph


@dataclasses.dataclass(frozen=True)
class _Spec:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    storage_offset: int


@dataclasses.dataclass(frozen=True)
class _SharedStorage:
    nbytes: int
    outputs: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _InputView:
    output: int
    input: int
    input_stride: tuple[int, ...]  # the input's strides when traced; others get a copy
    offset_from_input: int  # the output's storage offset minus the input's, in elements


class OutputLayout:
    def __init__(self, graph: TileGraph) -> None:
        self._specs = [_Spec(tuple(m.shape), tuple(m.stride()), m.dtype, m.storage_offset()) for m in graph.output_meta]
        input_of = {(StorageWeakRef(m.untyped_storage()), m.dtype): i for i, m in enumerate(graph.input_meta)}
        by_storage: dict[StorageWeakRef, list[int]] = {}
        self._input_views: list[_InputView] = []
        for index, meta in enumerate(graph.output_meta):
            storage = StorageWeakRef(meta.untyped_storage())
            source = input_of.get((storage, meta.dtype))
            if source is not None:
                traced = graph.input_meta[source]
                self._input_views.append(
                    _InputView(index, source, tuple(traced.stride()), meta.storage_offset() - traced.storage_offset()))
            else:
                by_storage.setdefault(storage, []).append(index)
        self._shared = [_SharedStorage(max(_end_in_bytes(graph.output_meta[i]) for i in indices), tuple(indices))
                        for indices in by_storage.values() if len(indices) > 1]
        # An output eager returns broadcast (stride 0, an expanded buffer) is constant along
        # those dims: only their first index is copied, as copying into overlapping memory is an error.
        self._broadcast_dims = [[d for d, (size, stride) in enumerate(zip(spec.shape, spec.stride)) if stride == 0 and size > 1]
                                for spec in self._specs]

    def make(self, args: Sequence[torch.Tensor], plan_views: Sequence[torch.Tensor]
             ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """This call's outputs, and the (plan view, output) pairs the runtime copies into them
        after the call's tiles (none for an output that is a view of an input)."""
        outputs: list[Optional[torch.Tensor]] = [None] * len(self._specs)
        for shared in self._shared:
            memory = torch.UntypedStorage(shared.nbytes)
            for i in shared.outputs:
                spec = self._specs[i]
                outputs[i] = torch.empty(0, dtype=spec.dtype).set_(memory, spec.storage_offset, spec.shape, spec.stride)
        viewed = set()
        for view in self._input_views:
            spec, source = self._specs[view.output], args[view.input]
            if source.stride() == view.input_stride:
                outputs[view.output] = source.as_strided(spec.shape, spec.stride, source.storage_offset() + view.offset_from_input)
                viewed.add(view.output)
        outputs = [out if out is not None else torch.empty_strided(spec.shape, spec.stride, dtype=spec.dtype)
                   for out, spec in zip(outputs, self._specs)]
        copies = [(_first_along(plan_views[i], dims), _first_along(outputs[i], dims))
                  for i, dims in enumerate(self._broadcast_dims) if i not in viewed]
        return outputs, copies


def _first_along(tensor: torch.Tensor, dims: list[int]) -> torch.Tensor:
    for d in dims:
        tensor = tensor.narrow(d, 0, 1)
    return tensor


def _end_in_bytes(meta: torch.Tensor) -> int:
    """One past the last byte of storage the tensor can reach."""
    end = meta.storage_offset()
    if meta.numel():
        end += sum((n - 1) * s for n, s in zip(meta.shape, meta.stride())) + 1
    return end * meta.element_size()
