"""Two tenants: ResNet-50 B1 and BERT-base S128 B1 requests served at once.

    HF_HUB_OFFLINE=1 python bench/tenants.py [--rounds 5] [--resnet 16 --bert 6]

A round serves a fixed mix of requests (--resnet ResNet-50 B1 calls, --bert BERT-base B1
calls) and measures its makespan, either one request after the other from one Python
thread, or from two Python threads at once (one per model). inductor+freezing runs with
torch's 2 intra-op threads per call, so two concurrent calls oversubscribe the cores;
aspen's two compiled models share one pool of 2 DSEs. inductor+freezing serves with static
shapes, with dynamic shapes, and with ResNet-50 static and BERT dynamic (each model's faster
on the AMD host; on the Intel host static is faster for both: see
bench.compile_inductor_freezing). Modes alternate round by round;
throughput is requests per second of the median makespan.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch._dynamo
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

Call = Callable[[], object]

# Server name -> the bench backend compiling (ResNet-50, BERT).
SERVERS = {
    "inductor+freezing": ("inductor+freezing", "inductor+freezing"),
    bench.INDUCTOR_DYNAMIC: (bench.INDUCTOR_DYNAMIC, bench.INDUCTOR_DYNAMIC),
    "inductor+freezing, static ResNet + dynamic BERT": ("inductor+freezing", bench.INDUCTOR_DYNAMIC),
    "aspen": ("aspen", "aspen"),
}


def serve_in_turn(resnet: Call, bert: Call, n_resnet: int, n_bert: int) -> float:
    start = time.perf_counter()
    for i in range(max(n_resnet, n_bert)):
        if i < n_resnet:
            resnet()
        if i < n_bert:
            bert()
    return time.perf_counter() - start


def serve_at_once(resnet: Call, bert: Call, n_resnet: int, n_bert: int) -> float:
    def loop(fn: Call, n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                fn()

    threads = [threading.Thread(target=loop, args=(resnet, n_resnet)), threading.Thread(target=loop, args=(bert, n_bert))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resnet", type=int, default=16, help="ResNet-50 B1 requests per round")
    parser.add_argument("--bert", type=int, default=6, help="BERT-base B1 requests per round")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    resnet_w, bert_w = bench.resnet50_workload(1), bench.bert_workload(1)
    resnet_model, bert_model = resnet_w.make_model(), bert_w.make_model()
    resnet_inputs, bert_inputs = resnet_w.make_inputs(), bert_w.make_inputs()
    with torch.no_grad():
        resnet_calls, bert_calls = {}, {}
        for backend in dict.fromkeys(name for pair in SERVERS.values() for name in pair):
            r, b = bench.BACKENDS[backend](resnet_model), bench.BACKENDS[backend](bert_model)
            r(*resnet_inputs), b(*bert_inputs)
            resnet_calls[backend], bert_calls[backend] = (lambda r=r: r(*resnet_inputs)), (lambda b=b: b(*bert_inputs))
        calls = {server: (resnet_calls[r], bert_calls[b]) for server, (r, b) in SERVERS.items()}
        modes = {(server, how): (serve, calls[server]) for server in calls
                 for how, serve in (("in turn", serve_in_turn), ("two threads", serve_at_once))}
        for serve, (r, b) in modes.values():  # warm up every mode, threads included
            serve(r, b, 1, 1)
        makespans: dict[tuple[str, str], list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode, (serve, (r, b)) in modes.items():
                makespans[mode].append(serve(r, b, args.resnet, args.bert))
    requests = args.resnet + args.bert
    throughput = {mode: requests / statistics.median(v) for mode, v in makespans.items()}
    best_baseline = max(v for (server, _), v in throughput.items() if server != "aspen")
    rows = [[server, how, f"{statistics.median(makespans[(server, how)]):.2f}",
             f"{min(makespans[(server, how)]):.2f}-{max(makespans[(server, how)]):.2f}",
             f"{throughput[(server, how)]:.1f}", f"{throughput[(server, how)] / best_baseline:.2f}x"]
            for server, how in modes]
    print(f"{args.resnet} ResNet-50 B1 + {args.bert} BERT-base S128 B1 requests per round, "
          f"medians of {args.rounds} rounds; {torch.get_num_threads()} threads / DSEs")
    print(tabulate(rows, headers=["server", "served", "makespan s", "min-max s", "requests/s",
                                  "vs best inductor+freezing"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
