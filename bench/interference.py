"""Latency when another process competes for a core: aspen vs eager vs inductor+freezing.

    HF_HUB_OFFLINE=1 python bench/interference.py [--runs 10]

Loads: none; an unpinned single-threaded torch matmul loop; a busy loop pinned to core 1
(`taskset -c 1`). Every backend runs at 1 and 2 threads (aspen: DSEs), interleaved, so
each load hits all of them alike. Barrier-based runtimes wait at every op for a preempted
thread; aspen's DSEs steal the preempted DSE's ready tiles. inductor+freezing runs with
static and with dynamic shapes (see bench.compile_inductor_freezing: BERT's linears are
twice as fast dynamic on the AMD host, ~10% slower on the Intel host); aspen is compared
with the faster of the two.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

import aspen_torch  # noqa: E402

FREEZING_BASELINES = ("inductor+freezing", bench.INDUCTOR_DYNAMIC)
BACKEND_NAMES = ("eager", *FREEZING_BASELINES, "aspen")
SHORT_NAMES = {"inductor+freezing": "ind+frz", bench.INDUCTOR_DYNAMIC: "ind+frz+dyn"}

LOADS = {
    "none": None,
    "matmul loop": [sys.executable, "-c",
                    "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True: a @ a"],
    "busy loop on core 1": ["taskset", "-c", "1", sys.executable, "-c", "while True: pass"],
}


def column_name(backend: str, threads: int) -> str:
    if backend == "aspen":
        return f"aspen {threads} DSE{'s' if threads > 1 else ''}"
    return f"{SHORT_NAMES.get(backend, backend)} {threads}T"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        del LOADS["busy loop on core 1"]
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    workloads = [bench.resnet50_workload(1), bench.bert_workload(1)]
    rows = []
    for workload in workloads:
        torch._dynamo.reset()  # as in bench.run_workload: keep the static baseline static
        model, inputs = workload.make_model(), workload.make_inputs()
        with torch.no_grad():
            fns = {name: bench.BACKENDS[name](model) for name in BACKEND_NAMES}
            for fn in fns.values():
                fn(*inputs)
            for load, command in LOADS.items():
                process = subprocess.Popen(command) if command else None
                try:
                    time.sleep(1.0 if command else 0.0)
                    times = {(name, threads): [] for name in fns for threads in (1, 2)}
                    for _ in range(args.runs + 1):  # the first round warms up
                        for (name, threads), samples in times.items():
                            if name == "aspen":
                                aspen_torch.set_num_dses(threads)
                            else:
                                torch.set_num_threads(threads)
                            fns[name](*inputs)  # as in bench.py: time back-to-back calls of one backend
                            start = time.perf_counter()
                            fns[name](*inputs)
                            samples.append(time.perf_counter() - start)
                finally:
                    if process is not None:
                        process.kill()
                        process.wait()
                torch.set_num_threads(2)
                aspen_torch.set_num_dses(2)
                medians = {k: statistics.median(v[1:]) * 1e3 for k, v in times.items()}
                best_baseline = min(v for (name, _), v in medians.items() if name != "aspen")
                best_freezing_2t = min(medians[(name, 2)] for name in FREEZING_BASELINES)
                aspen2 = medians[("aspen", 2)]
                rows.append([workload.name, load] + [f"{medians[(n, t)]:.1f}" for n in fns for t in (1, 2)] +
                            [f"{best_freezing_2t / aspen2:.2f}x", f"{best_baseline / aspen2:.2f}x"])
    print(f"medians of {args.runs} interleaved runs, ms; {SHORT_NAMES[bench.INDUCTOR_DYNAMIC]}: dynamic shapes")
    print(tabulate(rows, headers=["workload", "load"] +
                   [column_name(n, t) for n in BACKEND_NAMES for t in (1, 2)] +
                   ["aspen(2) vs best ind+frz(2T)", "aspen(2) vs best"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
