"""Eager vs inductor vs aspen, side by side, in one process with interleaved repetitions.

    python bench/bench.py            # ResNet-50 B1 and B32, BERT-base S128 B1 and B8
    python bench/bench.py --quick    # ResNet-50 B1 only, fewer runs (what the README demo prints)

Medians (with min and max) over --runs timed calls after warmup; each round calls every
backend once, so slow drifts of this shared machine hit all of them alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch._dynamo
import torch._inductor.config
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

import aspen_torch
from aspen_torch.models import resnet50


@dataclasses.dataclass
class Workload:
    name: str
    make_model: Callable[[], torch.nn.Module]
    make_inputs: Callable[[], tuple]


def resnet50_workload(batch: int) -> Workload:
    return Workload(f"ResNet-50 B{batch} 224x224", resnet50, lambda: (torch.randn(batch, 3, 224, 224),))


class BertBase(torch.nn.Module):
    """transformers' BertModel with BertConfig() and random weights; returns last_hidden_state."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig()).eval()

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_inputs(batch: int, seq: int) -> tuple:
    ids = torch.randint(0, 30522, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[batch // 2:, seq * 3 // 4:] = 0  # half the batch padded
    return ids, mask


def bert_workload(batch: int, seq: int = 128) -> Workload:
    return Workload(f"BERT-base S{seq} B{batch}", BertBase, lambda: bert_inputs(batch, seq))


WORKLOADS = {
    "resnet50-b1": lambda: resnet50_workload(1), "resnet50-b32": lambda: resnet50_workload(32),
    "bert-b1": lambda: bert_workload(1), "bert-b8": lambda: bert_workload(8),
}


def inductor_freezing_backend(graph_module, example_inputs):
    """Plain inductor under another name, so dynamo never hands the freezing model
    the cache entry compiled for plain inductor."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(graph_module, example_inputs)


def compile_inductor_freezing(model):
    """Inductor with freezing (weights as constants, oneDNN prepacking). Dynamo reads the
    flag while tracing too, so every call runs under it, not only the backend."""
    compiled = torch.compile(model, backend=inductor_freezing_backend)

    def call(*args):
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args)

    return call


BACKENDS: dict[str, Callable] = {
    "eager": lambda model: model,
    "inductor": lambda model: torch.compile(model, backend="inductor"),
    "inductor+freezing": compile_inductor_freezing,
    "aspen": lambda model: torch.compile(model, backend="aspen", options={"strict": True}),
}


def count_flops(model, inputs) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return float(counter.get_total_flops())


def run_workload(workload: Workload, backends: list[str], runs: int, warmup: int) -> list[dict]:
    model = workload.make_model()
    inputs = workload.make_inputs()
    flops = count_flops(model, inputs)
    with torch.no_grad():
        expected = model(*inputs)
        callables, first_call = {}, {}
        for name in backends:
            start = time.perf_counter()
            fn = BACKENDS[name](model)
            out = fn(*inputs)
            first_call[name] = time.perf_counter() - start
            torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
            callables[name] = fn
        for _ in range(warmup):
            for fn in callables.values():
                fn(*inputs)
        times = {name: [] for name in backends}
        for _ in range(runs):
            for name, fn in callables.items():
                start = time.perf_counter()
                fn(*inputs)
                times[name].append(time.perf_counter() - start)
    eager_median = statistics.median(times["eager"]) if "eager" in times else None
    rows = []
    for name in backends:
        median = statistics.median(times[name])
        rows.append({
            "workload": workload.name, "backend": name, "median_ms": median * 1e3,
            "min_ms": min(times[name]) * 1e3, "max_ms": max(times[name]) * 1e3,
            "gflops": flops / median / 1e9, "first_call_s": first_call[name] if name != "eager" else 0.0,
            "speedup_vs_eager": eager_median / median if eager_median else None, "runs": runs,
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ResNet-50 B1 only, 5 runs")
    parser.add_argument("--workloads", default=None, help="comma-separated subset of " + ",".join(WORKLOADS))
    parser.add_argument("--runs", type=int, default=None, help="timed calls per backend (default 10, quick 5)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ",".join(BACKENDS))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}")
    names = args.workloads.split(",") if args.workloads else (["resnet50-b1"] if args.quick else list(WORKLOADS))
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}")
    workloads = [WORKLOADS[n]() for n in names]
    runs = args.runs or (5 if args.quick else 10)
    rows = []
    for workload in workloads:
        rows += run_workload(workload, backends, runs, warmup=1 if args.quick else 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, aspen DSEs: "
          f"{aspen_torch.runtime_stats()['num_dses']}; medians of {runs} interleaved runs (min-max)")
    table = [[r["workload"], r["backend"], f"{r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f})",
              f"{r['gflops']:.0f}", f"{r['first_call_s']:.1f}" if r["backend"] != "eager" else "-",
              f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-"] for r in rows]
    print(tabulate(table, headers=["workload", "backend", "median ms (min-max)", "GFLOP/s", "first call s",
                                   "vs eager"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
