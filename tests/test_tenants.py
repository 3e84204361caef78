"""Several compiled models (tenants) called from several threads share one runtime."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import torch
import torch.nn as nn
from helpers import compile_strict

import aspen_torch
from aspen_torch.models import GPTBlock, SmallCNN, resnet18


def two_tenants():
    """A CNN and a transformer block, compiled strict: (compiled, inputs, eager outputs)."""
    models = [SmallCNN().eval(), GPTBlock().eval()]
    inputs = [torch.randn(2, 3, 33, 29), torch.randn(2, 17, 64)]
    with torch.no_grad():
        expected = [m(x) for m, x in zip(models, inputs)]
    return [compile_strict(m) for m in models], inputs, expected


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
    # Overlapping calls of one model run on plans (programs) of their own.
    assert len(programs) >= len(models), "every tenant's tiles ran on the shared DSEs"
    for dse in {e.dse for e in recorded.events}:
        assert len({e.program for e in recorded.events if e.dse == dse}) > 1, "tenants interleave on a DSE"


def test_submit_returns_futures_that_match_eager():
    compiled, inputs, expected = two_tenants()
    futures = [aspen_torch.submit(compiled[i % 2], inputs[i % 2]) for i in range(12)]
    done, not_done = concurrent.futures.wait(futures, timeout=300)
    assert not not_done
    for i, f in enumerate(futures):
        torch.testing.assert_close(f.result(), expected[i % 2], rtol=1e-4, atol=1e-4)


def test_submit_surfaces_errors_in_the_future():
    compiled = compile_strict(nn.Linear(4, 2).eval())
    with torch.no_grad():
        compiled(torch.randn(3, 4))
    future = aspen_torch.submit(compiled, "not a tensor")
    with pytest.raises(Exception):
        future.result(timeout=300)


def test_urgent_request_overtakes_a_running_one():
    aspen_torch.set_num_dses(1)
    slow_model, fast_model = resnet18(), SmallCNN().eval()
    # ~10 GFLOP: tens of ms on one DSE even on a fast core, against ~1 ms for the urgent one.
    slow_x, fast_x = torch.randn(16, 3, 128, 128), torch.randn(1, 3, 33, 29)
    slow, fast = compile_strict(slow_model), compile_strict(fast_model)
    with torch.no_grad():
        slow(slow_x)
        fast(fast_x)
        expected = fast_model(fast_x)
    with aspen_torch.trace() as recorded:
        tiles_before = sum(aspen_torch.runtime_stats()["tiles_per_dse"])
        background = aspen_torch.submit(slow, slow_x)
        while sum(aspen_torch.runtime_stats()["tiles_per_dse"]) == tiles_before:
            time.sleep(0.001)  # until the slow request is under way
        urgent = aspen_torch.submit(fast, fast_x, priority=1)
        torch.testing.assert_close(urgent.result(timeout=300), expected, rtol=1e-4, atol=1e-4)
        assert not background.done(), "the urgent request finished while the other still ran"
        background.result(timeout=300)
    by_program = {}
    for e in recorded.events:
        by_program.setdefault(e.program, []).append(e)
    assert len(by_program) == 2
    urgent_events, slow_events = sorted(by_program.values(), key=len)  # the small model has fewer tiles
    first, last = min(e.start_ns for e in urgent_events), max(e.end_ns for e in urgent_events)
    started_between = [e for e in slow_events if first < e.start_ns < last]
    assert not started_between, "no tile of the normal request starts while the urgent one runs"


def test_resizing_under_load_keeps_every_result():
    compiled, inputs, expected = two_tenants()
    futures = []
    for size in [1, 2, 1, 3, 1, 2]:
        futures += [aspen_torch.submit(compiled[i % 2], inputs[i % 2]) for i in range(6)]
        aspen_torch.set_num_dses(size)
    for i, f in enumerate(futures):
        torch.testing.assert_close(f.result(timeout=300), expected[i % 2], rtol=1e-4, atol=1e-4)


def test_one_model_called_from_many_threads_at_once():
    """Concurrent calls of one compiled model each get their own activation buffers."""
    model = GPTBlock().eval()
    compiled = compile_strict(model)
    inputs = [torch.randn(2, 17, 64) for _ in range(8)]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
        compiled(inputs[0])
    futures = [aspen_torch.submit(compiled, x) for x in inputs * 3]
    for i, f in enumerate(futures):
        torch.testing.assert_close(f.result(timeout=300), expected[i % len(inputs)], rtol=1e-4, atol=1e-4)


def test_submit_works_with_asyncio():
    import asyncio

    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).eval()
    compiled = compile_strict(model)
    x = torch.randn(3, 16)
    with torch.no_grad():
        expected = model(x)
        compiled(x)

    async def serve():
        return await asyncio.gather(*(asyncio.wrap_future(aspen_torch.submit(compiled, x)) for _ in range(4)))

    for result in asyncio.run(serve()):
        torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-4)
