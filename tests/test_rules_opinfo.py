"""Every OpInfo of PyTorch's own op database (fp32 samples, their tensors as graph inputs,
contiguous and transposed) against eager: an op aspen tiles must match in strict mode; an
op that may run in eager (MAY_RUN_IN_EAGER) must raise AspenUnsupportedError in strict mode
and match through the fallback. ASPEN_OPINFO_SAMPLES=5 runs more samples per op (default
1: ~2 minutes)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from helpers import assert_matches_eager

from aspen_torch import AspenUnsupportedError

pytest.importorskip("expecttest")  # torch.testing._internal imports it
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

SAMPLES = int(os.environ.get("ASPEN_OPINFO_SAMPLES", "1"))
# Samples call deprecated and odd forms on purpose (dropout2d of a 3-d input, ...).
pytestmark = pytest.mark.filterwarnings("ignore")

# Ops with a sample aspen does not tile, by reason; the others must run on aspen.
MAY_RUN_IN_EAGER_PREFIXES = ("linalg.", "fft.")  # LAPACK decompositions and FFTs: no rules
MAY_RUN_IN_EAGER = frozenset({
    # dtypes other than fp32, int32, int64 and bool (conversions, float64 results)
    "bfloat16", "byte", "cdouble", "cfloat", "chalf", "char", "complex", "double", "half", "short", "to",
    "float_power", "full_like", "ones_like", "zeros_like", "gather", "linspace.tensor_overload", "polar",
    "view_as_complex", "log_softmax.with_dtype", "softmax.with_dtype", "nn.functional.softmin.with_dtype",
    "stft", "new_empty_strided",
    # convolutions whose weights are graph inputs, not frozen parameters (aspen prepacks weights)
    "nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv3d", "nn.functional.conv_transpose1d",
    "nn.functional.conv_transpose2d", "nn.functional.conv_transpose3d",
    # batch and layer norm in training form or returning their statistics
    "_batch_norm_with_update", "_native_batch_norm_legit", "native_batch_norm", "nn.functional.batch_norm",
    "nn.functional.instance_norm", "native_group_norm", "native_layer_norm",
    # matrix decompositions and solvers outside torch.linalg
    "cholesky", "cholesky_inverse", "cholesky_solve", "geqrf", "logdet", "lu", "lu_solve", "lu_unpack",
    "matrix_exp", "ormqr", "pinverse", "qr", "svd", "triangular_solve", "norm.nuc",
    # ops without a rule (unfold: of a 0-d tensor; as_strided: reading outside its input)
    "as_strided.partial_views", "as_strided_scatter", "diagonal_scatter", "unfold",
    "unfold_copy", "_segment_reduce.lengths", "_segment_reduce.offsets", "grid_sampler_3d", "hash_tensor",
    "histogram", "histogramdd", "index_reduce.amax", "index_reduce.amin", "index_reduce.mean", "index_reduce.prod",
    "max_pool2d_with_indices_backward", "nn.functional.pdist",
    "nn.functional.linear_cross_entropy.chunked", "nn.functional.linear_cross_entropy.chunked_none",
    "nonzero_static", "put", "repeat_interleave", "view_copy",
})
# Ops whose values are unspecified (uninitialized memory) or random: shapes and dtypes only.
UNSPECIFIED_VALUES = frozenset({
    "bernoulli", "empty", "empty_like", "empty_permuted", "empty_strided", "new_empty", "new_empty_strided",
    "nn.functional.dropout", "normal", "rand_like", "randint_like", "randn_like", "uniform",
})

# Ops whose meta kernel gives other strides than eager's kernel: values only (inductor
# returns the traced strides too).
TRACED_STRIDES_DIFFER = frozenset({"native_dropout_backward"})


def _name(op) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


OPS = [op for op in op_db if op.supports_dtype(torch.float32, "cpu")]


class _Sample(nn.Module):
    """The op applied to a sample, its tensors passed in, its other arguments constants."""

    def __init__(self, op, sample):
        super().__init__()
        self.op = op
        self.leaves, self.spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
        self.tensor_positions = [i for i, leaf in enumerate(self.leaves) if isinstance(leaf, torch.Tensor)]

    def tensors(self) -> list[torch.Tensor]:
        return [self.leaves[i].detach() for i in self.tensor_positions]

    def forward(self, *tensors):
        leaves = list(self.leaves)
        for i, t in zip(self.tensor_positions, tensors):
            leaves[i] = t
        input, args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return self.op.op(input, *args, **kwargs)


class _ShapesOnly(_Sample):
    def forward(self, *tensors):
        return pytree.tree_map_only(torch.Tensor, lambda t: torch.tensor(t.shape) if t.dim() else t * 0,
                                    super().forward(*tensors))


class _Contiguous(_Sample):
    def forward(self, *tensors):
        return pytree.tree_map_only(torch.Tensor, torch.Tensor.contiguous, super().forward(*tensors))


def _unsupported(error: BaseException) -> bool:
    while error is not None and not isinstance(error, AspenUnsupportedError):
        error = error.__cause__ or getattr(error, "inner_exception", None)
    return error is not None


def _with_last_dims_transposed(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same values with the last two dims' strides swapped (a transposed activation)."""
    return [t.mT.contiguous().mT if t.dim() >= 2 and t.layout == torch.strided else t for t in tensors]


@pytest.mark.parametrize("op", OPS, ids=_name)
def test_op_matches_eager(op):
    """Each sample with its tensors as given, and again, where one has two dims or more,
    with their last two dims' strides swapped."""
    name = _name(op)
    may_fall_back = name in MAY_RUN_IN_EAGER or name.startswith(MAY_RUN_IN_EAGER_PREFIXES)
    samples = list(op.sample_inputs("cpu", torch.float32, requires_grad=False))[:SAMPLES]
    for sample in samples:
        kind = _Contiguous if name in TRACED_STRIDES_DIFFER else _Sample
        model = (_ShapesOnly if op.name in UNSPECIFIED_VALUES else kind)(op, sample)
        variants = [model.tensors()]
        if any(t.dim() >= 2 for t in variants[0]):
            variants.append(_with_last_dims_transposed(variants[0]))
        for inputs in variants:
            _check_sample(model, inputs, may_fall_back)


def _check_sample(model: _Sample, inputs: list[torch.Tensor], may_fall_back: bool) -> None:
    try:
        with torch.no_grad():
            expected = model(*[t.clone() for t in inputs])
    except Exception:
        return  # eager rejects the sample (a CUDA-only jiterator, an invalid stride)
    tensors = [t for t in pytree.tree_leaves((expected, inputs)) if isinstance(t, torch.Tensor)]
    if any(t.layout != torch.strided for t in tensors):
        return  # sparse tensors: dynamo runs them in eager
    try:
        assert_matches_eager(model, *inputs, require_tiles=False)
    except Exception as error:
        if not (may_fall_back and _unsupported(error)):
            raise
        torch._dynamo.reset()
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(model, backend="aspen")(*inputs), model(*inputs),
                                       rtol=1e-4, atol=1e-4, equal_nan=True)
