"""aspen_torch: ASPEN for PyTorch. torch.compile(model, backend="aspen") runs the model as one graph of tiles."""
import torch
import torch._dynamo

from . import _C  # noqa: F401  (the runtime extension; fails loudly if not built)
from .backend import aspen_backend
from .errors import AspenError, AspenInputError, AspenUnsupportedError
from .explain import explain
from .report import CompileReport
from .requests import submit
from .runtime import runtime_stats, set_dse_pinning, set_num_dses, set_tile_sharing
from .trace import Trace, plot_trace, trace

if "aspen" not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(aspen_backend, name="aspen")

__all__ = [
    "aspen_backend", "explain", "runtime_stats", "set_dse_pinning", "set_num_dses", "set_tile_sharing", "submit", "trace", "plot_trace", "Trace", "CompileReport",
    "AspenError", "AspenInputError", "AspenUnsupportedError",
]
