"""Greedy generation with a compiled forward: GPT-2 small (random weights), KV cache.

    HF_HUB_OFFLINE=1 python bench/generate.py [--prompt 32 --new-tokens 32 --runs 10]
        [--backends eager,inductor,aspen,aspen-compile-every-shape]

Every decode step has a new key length, so a backend that plans per shape sees a new
shape every token. Each backend runs in a fresh process: the first generate (compiles
included), then the median of --runs more; the tokens are checked against eager's; peak
RSS is the process's high-water mark.
"aspen" is the default (recompiles="when_hot"); "aspen-compile-every-shape" compiles every
length on first sight (recompiles="always", as strict mode does).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

BACKEND_OPTIONS = {
    "aspen": {},
    "aspen-compile-every-shape": {"recompiles": "always"},
}


def measure(backend: str, prompt: int, new_tokens: int, runs: int) -> dict:
    """In this process: generate with GPT-2 small's forward compiled by `backend`."""
    import torch
    import transformers

    import aspen_torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, prompt))
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    report = aspen_torch.CompileReport()
    with torch.no_grad():
        expected = model.generate(ids, **settings)
        if backend == "inductor":
            model.forward = torch.compile(model.forward)
        elif backend != "eager":
            model.forward = torch.compile(model.forward, backend=lambda gm, ex: aspen_torch.aspen_backend(
                gm, ex, BACKEND_OPTIONS[backend], report=report))
        start = time.perf_counter()
        same = torch.equal(model.generate(ids, **settings), expected)
        first = time.perf_counter() - start
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            same &= torch.equal(model.generate(ids, **settings), expected)
            times.append(time.perf_counter() - start)
    return {"first_s": first, "generate_ms": statistics.median(times) * 1e3, "same_tokens": same,
            "graphs_compiled": report.num_graphs, "calls_in_eager": report.cold_calls,
            "peak_rss_mib": bench.own_peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--backends", default="eager,inductor,aspen,aspen-compile-every-shape")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.prompt, args.new_tokens, args.runs)))
        return
    rows = []
    for backend in args.backends.split(","):
        out = subprocess.run([sys.executable, __file__, "--worker", backend, "--prompt", str(args.prompt),
                              "--new-tokens", str(args.new_tokens), "--runs", str(args.runs)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append([backend, f"{r['first_s']:.2f}", f"{r['generate_ms']:.1f}",
                     f"{r['generate_ms'] / args.new_tokens:.2f}", r["same_tokens"], f"{r['peak_rss_mib']:.0f}",
                     r["graphs_compiled"] if backend.startswith("aspen") else "",
                     r["calls_in_eager"] if backend.startswith("aspen") else ""])
    print(f"GPT-2 small, prompt {args.prompt}, {args.new_tokens} new tokens, greedy, KV cache; "
          f"median of {args.runs} generates after the first")
    print(tabulate(rows, headers=["backend", "first generate s", "generate ms", "ms / token", "tokens as eager",
                                  "peak RSS MiB", "aspen graphs compiled", "aspen calls in eager"], tablefmt="github"))


if __name__ == "__main__":
    main()
