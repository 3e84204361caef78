"""Several compiled models (tenants) called from several threads share one runtime."""
from __future__ import annotations

import threading

import torch
import torch.nn as nn
from helpers import compile_strict

import aspen_torch
from aspen_torch.models import GPTBlock, SmallCNN


def test_threads_times_models_match_eager_and_interleave():
    models = [SmallCNN().eval(), GPTBlock().eval(),
              nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()]
    inputs = [torch.randn(2, 3, 33, 29), torch.randn(2, 17, 64), torch.randn(5, 32)]
    compiled = [compile_strict(m) for m in models]
    with torch.no_grad():
        expected = [m(x) for m, x in zip(models, inputs)]
        for c, x in zip(compiled, inputs):
            c(x)  # compile on this thread first
    errors = []

    def client(seed: int) -> None:
        try:
            with torch.no_grad():
                for i in range(30):
                    k = (seed + i) % len(models)
                    torch.testing.assert_close(compiled[k](inputs[k]), expected[k], rtol=1e-4, atol=1e-4)
        except Exception as e:  # collected: an assert in a thread cannot fail the test
            errors.append(e)

    with aspen_torch.trace() as recorded:
        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    programs = {e.program for e in recorded.events}
    assert len(programs) == len(models), "every tenant's tiles ran on the shared DSEs"
    for dse in {e.dse for e in recorded.events}:
        assert len({e.program for e in recorded.events if e.dse == dse}) > 1, "tenants interleave on a DSE"
