"""Ops without an APU rule that torch decomposes into ops with one, beyond core ATen's
decompositions: AOTAutograd applies them while it traces (capture.decomposition_table), so
these ops are tiled instead of run in eager."""
from __future__ import annotations

from typing import Callable

import torch
from torch._decomp import get_decompositions

aten = torch.ops.aten

# Functional copies of views become the view and a copy; the others their arithmetic.
# (Not view_copy: its decomposition raises where eager's kernel reshapes, at sizes no view
# of the input's strides can take.)
_TORCH_DECOMPOSED = [
    aten.addmv, aten.dist, aten.as_strided_copy, aten.expand_copy, aten.narrow_copy, aten.permute_copy,
    aten.squeeze_copy, aten.t_copy, aten.unbind_copy, aten.unfold_copy,
]
_TORCH_ADDMM = get_decompositions([aten.addmm.default])[aten.addmm.default]


def _addmm_outside_its_rule(bias: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, *,
                            beta: float = 1, alpha: float = 1):
    """addmm with alpha or beta other than 1, or a 2-d bias, as mm, scaling and add; the form
    matmul.py's rule tiles (a linear layer's) stays addmm (NotImplemented: no decomposition)."""
    if beta == 1 and alpha == 1 and bias.dim() <= 1:
        return NotImplemented
    return _TORCH_ADDMM(bias, mat1, mat2, beta=beta, alpha=alpha)


def _addbmm(bias: torch.Tensor, batch1: torch.Tensor, batch2: torch.Tensor, *, beta: float = 1, alpha: float = 1):
    """addbmm (torch has no decomposition): the sum over the batch of batch1[i] @ batch2[i]
    is one product whose reduced dimension runs over batch and columns together."""
    batch, rows, inner = batch1.shape
    folded1 = batch1.permute(1, 0, 2).reshape(rows, batch * inner)
    folded2 = batch2.reshape(batch * inner, batch2.shape[2])
    return aten.addmm.default(bias, folded1, folded2, beta=beta, alpha=alpha)


def extra_decompositions() -> dict[torch._ops.OpOverload, Callable]:
    return {**get_decompositions(_TORCH_DECOMPOSED), aten.addmm.default: _addmm_outside_its_rule,
            aten.addbmm.default: _addbmm}
