"""The backend as users reach it: the entry point, the GIL, the garbage collector, weight prepacking."""
from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
import weakref

import pytest
import torch
import torch.nn as nn
from helpers import compile_strict

from aspen_torch.models import resnet18


def test_entry_point_in_a_fresh_interpreter():
    code = (
        "import sys, torch\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()\n"
        "x = torch.randn(1, 3, 10, 10)\n"
        "with torch.no_grad():\n"
        "    y = torch.compile(m, backend='aspen', options={'strict': True})(x)\n"
        "    torch.testing.assert_close(y, m(x), rtol=1e-4, atol=1e-4)\n"
        "assert 'aspen_torch' in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_gil_is_released_while_the_runtime_runs():
    model = resnet18()
    compiled = compile_strict(model)
    x = torch.randn(4, 3, 128, 128)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    with torch.no_grad():
        compiled(x)
        thread = threading.Thread(target=ticker)
        thread.start()
        start = time.perf_counter()
        compiled(x)
        end = time.perf_counter()
        done.set()
        thread.join()
    during = [t for t in ticks if start < t < end]
    assert len(during) >= 3, "another Python thread kept running during an aspen call"


@pytest.mark.parametrize("frozen_by_the_caller", [False, True])
def test_compile_leaves_the_garbage_collector_as_it_found_it(frozen_by_the_caller):
    """Older objects sit in the permanent generation only while aspen compiles (its
    collections then skip dynamo's heap); a caller's own freeze is left alone; and garbage
    from before the compile is still collected after it."""
    class Node:
        def __init__(self):
            self.me = self  # a reference cycle: only the collector frees it

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    gc.collect()
    if frozen_by_the_caller:
        gc.freeze()
    try:
        cycle = weakref.ref(Node())
        with torch.no_grad():
            compile_strict(model)(torch.randn(1, 3, 8, 8))
        assert (gc.get_freeze_count() > 0) == frozen_by_the_caller
        if not frozen_by_the_caller:
            gc.collect()
            assert cycle() is None
    finally:
        gc.unfreeze()


def _convs_and_linears():
    return nn.Sequential(
        nn.Conv2d(3, 16, 7, stride=2, padding=3), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.Conv2d(32, 32, 3, padding=1),
        nn.Conv2d(32, 64, 1, stride=2), nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.Flatten(1, 2),
        nn.Linear(16, 96), nn.GELU(), nn.Linear(96, 24)).eval(), torch.randn(2, 3, 64, 64), \
        {"linear_kernel": "onednn"}, {"convolution", "inner_product"}


def _pointwise_convs_in_pixel_ranges():
    """One image of 8x8 = 64 pixels cut into two ranges of 32 that share one packing (oneDNN's:
    with MKL's linears these convolutions would run as MKL GEMMs)."""
    model = nn.Sequential(nn.Conv2d(64, 256, 1), nn.ReLU(), nn.Conv2d(256, 64, 1))
    return model.eval(), torch.randn(1, 64, 8, 8), {"num_dses": 2, "min_tile_flops": 1e4, "linear_kernel": "onednn"}, \
        {"convolution"}


@pytest.mark.parametrize("make", [_convs_and_linears, _pointwise_convs_in_pixel_ranges], ids=["mixed", "pixel_ranges"])
def test_no_weight_reorder_during_execution(capfd, make):
    """oneDNN's verbose log lists every reorder primitive it runs; prepacked weights need none."""
    model, x, options, primitives = make()
    compiled = compile_strict(model, **options)
    with torch.no_grad():
        compiled(x)
        capfd.readouterr()
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            compiled(x)
    log = capfd.readouterr().out
    executed = [line for line in log.splitlines() if ",exec,cpu," in line]
    for primitive in primitives:
        assert any(f",{primitive}," in line for line in executed), f"no {primitive} ran on oneDNN"
    assert not [line for line in executed if ",reorder," in line]
