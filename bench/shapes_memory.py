"""Memory and first-call time of one compiled BERT-base called at many sequence lengths.

    HF_HUB_OFFLINE=1 python bench/shapes_memory.py [--lengths 32,48,64,...] [--backends aspen,inductor+freezing,eager]

Dynamo compiles the first two lengths as static graphs and then one graph with symbolic
sizes, which aspen plans per concrete length (sharing the packed weights; bench's aspen
runs in strict mode, which compiles every length at once, where by default a new length
runs in eager until it recurs enough to pay its compile: see bench/generate.py). Each backend
runs in a fresh process (RSS is per process); a row per length gives the first call's
time, a second call's time, and the resident set after it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

DEFAULT_LENGTHS = "32,48,64,80,96,112,128,33,47,65,100,127"


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def measure(backend: str, lengths: list[int]) -> list[dict]:
    """In this process: compile BERT-base with `backend` and call it at every length."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench

    torch.manual_seed(0)
    model = bench.BertBase().eval()
    compiled = bench.BACKENDS[backend](model)
    rows = []
    with torch.no_grad():
        for length in lengths:
            inputs = bench.bert_inputs(1, length)
            start = time.perf_counter()
            compiled(*inputs)
            first = time.perf_counter() - start
            start = time.perf_counter()
            compiled(*inputs)
            rows.append({"length": length, "first_s": first, "again_ms": (time.perf_counter() - start) * 1e3,
                         "rss_mib": _rss_mib()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS)
    parser.add_argument("--backends", default="aspen,inductor+freezing,eager")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.worker:
        print(json.dumps(measure(args.worker, lengths)))
        return
    results = {}
    for backend in args.backends.split(","):
        out = subprocess.run([sys.executable, __file__, "--worker", backend, "--lengths", args.lengths],
                             check=True, capture_output=True, text=True).stdout
        results[backend] = json.loads(out.strip().splitlines()[-1])
    table = [[n] + [f"{r[i]['first_s']:.2f} s / {r[i]['again_ms']:.0f} ms / {r[i]['rss_mib']:.0f} MiB"
                    for r in results.values()] for i, n in enumerate(lengths)]
    print(tabulate(table, headers=["length", *(f"{b}: first / again / RSS" for b in results)], tablefmt="github"))


if __name__ == "__main__":
    main()
