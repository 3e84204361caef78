"""Where the first call of a ResNet-50 compiled with aspen goes, in this fresh process.

    python bench/first_call.py [--batch 32]

Times the first call whole, aspen's compile inside it (`backend.compile_captured`: partition,
lowering with folding and prepacking, plan), the compiled graph's first run, and the garbage
collections of the whole heap (generation 2) wherever they fall; dynamo's tracing and
AOTAutograd are the rest. Run it once per measurement: a second compile in one process finds
warm caches (packings, decompositions, oneDNN primitives).
"""
from __future__ import annotations

import argparse
import gc
import time

import torch

from aspen_torch import backend, execute
from aspen_torch.models import resnet50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    spent = {"aspen compile": 0.0, "first run": 0.0}

    def timed(label, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - start
        return wrapper

    backend.compile_captured = timed("aspen compile", backend.compile_captured)
    execute.CompiledPartition.__call__ = timed("first run", execute.CompiledPartition.__call__)
    collections: list[float] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started.append(time.perf_counter())
        else:
            collections.append(time.perf_counter() - started.pop())

    torch.manual_seed(0)
    model, x = resnet50().eval(), torch.randn(args.batch, 3, 224, 224)
    compiled = torch.compile(model, backend="aspen")
    gc.callbacks.append(on_gc)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(x)
    total = time.perf_counter() - start
    gc.callbacks.remove(on_gc)
    rest = total - spent["aspen compile"] - spent["first run"]
    print(f"ResNet-50 B{args.batch} first call {total:.2f} s = dynamo + AOTAutograd {rest:.2f} s"
          f" + aspen compile {spent['aspen compile']:.2f} s + first run {spent['first run']:.2f} s;"
          f" whole-heap garbage collections {sum(collections):.2f} s ({len(collections)}) among them")


if __name__ == "__main__":
    main()
