"""aspen_torch.explain: compile a model once and report what aspen made of it."""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import torch

from .backend import aspen_backend
from .report import CompileReport


def explain(model: torch.nn.Module, *example_inputs: Any, options: Optional[Mapping[str, Any]] = None,
            **example_kwargs: Any) -> CompileReport:
    """Compiles `model` with aspen, runs it once on the example inputs and returns the
    CompileReport: fallback_ops, num_tiles, num_edges, tiles_per_op (print() it for a summary)."""
    report = CompileReport()
    compiled = torch.compile(model, backend=functools.partial(aspen_backend, options=options, report=report))
    with torch.no_grad():
        compiled(*example_inputs, **example_kwargs)
    return report
