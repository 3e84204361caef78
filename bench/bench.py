"""Eager vs inductor vs aspen, side by side, in one process with interleaved repetitions.

    python bench/bench.py            # ResNet-50 B1 and B32, BERT-base S128 B1 and B8
    python bench/bench.py --quick    # ResNet-50 B1 only, fewer runs (what the README demo prints)
    python bench/bench.py --workloads gpt2-b1,llama-b1   # decoders: GPT-2 small, LLaMA-style GQA
    python bench/bench.py --workloads torch-encoder-b1,torch-encoder-b8   # BERT-base's encoder from torch.nn

Medians (with min and max) over --runs timed calls after warmup; each round calls every
backend in turn, so slow drifts of this shared machine hit all of them alike. Within a round a
backend is called twice and the second call is timed: the first absorbs what the previous
backend left behind (its OpenMP workers spin for milliseconds after a parallel region, on the
cores the next backend needs), so each timing is of back-to-back calls of one backend. The machine's
peak is measured in the same run (a large GEMM and a conv at 1 and at all threads), and
each row's GFLOP/s is also given as a fraction of it. Peak RSS comes from a fresh process
per workload and backend (compile plus a few calls), since a process's high-water mark
cannot be reset. Results also go to JSON and to a PNG bar chart (matplotlib, if present).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
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


class TorchEncoder(torch.nn.Module):
    """BERT-base's encoder built from torch.nn alone: nn.TransformerEncoder of 12 layers
    (768 wide, 12 heads, GELU), on embeddings with a key padding mask. In eval under no_grad
    eager runs each layer as PyTorch's fused fast path (`_transformer_encoder_layer_fwd`)."""

    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu", batch_first=True)
        # Without nested tensors: with them eager zeroes the padded positions and dynamo's trace does not.
        self.encoder = torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False).eval()

    def forward(self, embeddings, padding):
        return self.encoder(embeddings, src_key_padding_mask=padding)


def torch_encoder_inputs(batch: int, seq: int) -> tuple:
    padding = torch.zeros(batch, seq, dtype=torch.bool)
    padding[batch // 2:, seq * 3 // 4:] = True  # half the batch padded, as bert_inputs
    return torch.randn(batch, seq, 768), padding


def torch_encoder_workload(batch: int, seq: int = 128) -> Workload:
    return Workload(f"nn.TransformerEncoder 12x768 S{seq} B{batch}", TorchEncoder, lambda: torch_encoder_inputs(batch, seq))


class DecoderLM(torch.nn.Module):
    """A transformers decoder (random weights) returning last_hidden_state: GPT-2 small, or
    a LLaMA-style model of BERT-base's size with grouped-query attention (4 K/V heads)."""

    def __init__(self, family: str):
        super().__init__()
        import transformers as T

        self.model = (T.GPT2Model(T.GPT2Config()) if family == "gpt2" else T.LlamaModel(T.LlamaConfig(
            num_hidden_layers=12, hidden_size=768, intermediate_size=2048, num_attention_heads=12,
            num_key_value_heads=4, vocab_size=32000))).eval()

    def forward(self, input_ids):
        return self.model(input_ids)[0]


def decoder_workload(family: str, batch: int = 1, seq: int = 128) -> Workload:
    label = "GPT-2 small" if family == "gpt2" else "LLaMA-style 12x768 GQA"
    return Workload(f"{label} S{seq} B{batch}", lambda: DecoderLM(family),
                    lambda: (torch.randint(0, 32000, (batch, seq)),))


WORKLOADS = {
    "resnet50-b1": lambda: resnet50_workload(1), "resnet50-b32": lambda: resnet50_workload(32),
    "bert-b1": lambda: bert_workload(1), "bert-b8": lambda: bert_workload(8),
    "gpt2-b1": lambda: decoder_workload("gpt2"), "llama-b1": lambda: decoder_workload("llama"),
    "torch-encoder-b1": lambda: torch_encoder_workload(1), "torch-encoder-b8": lambda: torch_encoder_workload(8),
}
ISSUE_WORKLOADS = ["resnet50-b1", "resnet50-b32", "bert-b1", "bert-b8"]  # the default run: issue 5's targets


def inductor_freezing_backend(graph_module, example_inputs):
    """Plain inductor under another name, so dynamo never hands the freezing model
    the cache entry compiled for plain inductor."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(graph_module, example_inputs)


def compile_inductor_freezing(model, dynamic: bool = False):
    """Inductor with freezing (weights as constants, prepacked). Dynamo reads the flag while
    tracing too, so every call runs under it, not only the backend. With static shapes
    inductor packs fp32 linear weights for MKL, whose AVX2 path on an AMD host runs at half
    oneDNN's rate; with dynamic shapes (M unknown) it packs them for oneDNN instead: BERT-base
    B1 on the AMD host 144 ms static, 53 ms dynamic, on the Intel host 80 and 89. Both are
    baselines."""
    compiled = torch.compile(model, backend=inductor_freezing_backend, dynamic=dynamic)

    def call(*args):
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args)

    return call


# Left out of --quick (the README demo): its compile takes ~20 s and ResNet-50 gains nothing from it.
INDUCTOR_DYNAMIC = "inductor+freezing+dynamic"

BACKENDS: dict[str, Callable] = {
    "eager": lambda model: model,
    "inductor": lambda model: torch.compile(model, backend="inductor"),
    "inductor+freezing": compile_inductor_freezing,
    INDUCTOR_DYNAMIC: lambda model: compile_inductor_freezing(model, dynamic=True),
    "aspen": lambda model: torch.compile(model, backend="aspen", options={"strict": True}),
}


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of `runs` calls of `fn`, after one untimed call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_peak_gflops(threads: int, runs: int = 10) -> dict[str, float]:
    """GFLOP/s of a 2048^3 GEMM (oneDNN, prepacked weight, as inductor's freezing and aspen
    run linears) and of a 3x3 conv (ResNet layer-2 shape, batch 8, channels-last) with
    `threads` ATen threads: the rate this machine reaches for these kernels, now."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        packed = torch.ops.mkldnn._reorder_linear_weight(b, 2048)
        x = torch.randn(8, 128, 28, 28).contiguous(memory_format=torch.channels_last)
        w = torch.randn(128, 128, 3, 3).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            gemm_s = median_seconds(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""), runs)
            conv_s = median_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), runs)
    finally:
        torch.set_num_threads(previous)
    return {"gemm": 2 * 2048 ** 3 / gemm_s / 1e9, "conv": 2 * 8 * 128 * 28 * 28 * 128 * 9 / conv_s / 1e9}


def peak_rss_mib(workload_name: str, backend: str, calls: int = 3) -> float:
    """Peak RSS of a fresh process that builds the workload, compiles it with `backend` and calls it."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench; "
            f"print(bench.rss_probe({workload_name!r}, {backend!r}, {calls}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def rss_probe(workload_name: str, backend: str, calls: int) -> float:
    torch.manual_seed(0)
    workload = WORKLOADS[workload_name]()
    model, inputs = workload.make_model(), workload.make_inputs()
    with torch.no_grad():
        fn = BACKENDS[backend](model)
        for _ in range(calls):
            fn(*inputs)
    return own_peak_rss_mib()


def own_peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    over from the (large) parent across fork+exec."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def write_bar_chart(rows: list[dict], path: Path) -> bool:
    """Speedup over eager per workload and backend; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(2.2 * len(workloads) + 2, 4))
    for i, backend in enumerate(backends):
        values = [next((r["speedup_vs_eager"] or 0.0 for r in rows if r["workload"] == w and r["backend"] == backend),
                       0.0) for w in workloads]
        bars = ax.bar([k + i * width for k in range(len(workloads))], values, width, label=backend)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([k + width * (len(backends) - 1) / 2 for k in range(len(workloads))], workloads, fontsize=8)
    ax.set_ylabel("speedup over eager (median)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def count_flops(model, inputs) -> float:
    # nn.TransformerEncoderLayer's fused fast path has no FLOP formula: count the ops it fuses.
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return float(counter.get_total_flops())


def run_workload(workload: Workload, backends: list[str], runs: int, warmup: int, peak_gflops: float) -> list[dict]:
    # Without this, an earlier workload of the same model code (BERT B1 before B8) makes
    # dynamo compile this one with dynamic shapes ("automatic dynamic"): the static rows
    # would not be static.
    torch._dynamo.reset()
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
                fn(*inputs)
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
            "gflops": flops / median / 1e9, "fraction_of_peak": flops / median / 1e9 / peak_gflops,
            "first_call_s": first_call[name] if name != "eager" else 0.0,
            "speedup_vs_eager": eager_median / median if eager_median else None, "runs": runs,
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ResNet-50 B1 only, 5 runs, no peak RSS")
    parser.add_argument("--workloads", default=None, help="comma-separated subset of " + ",".join(WORKLOADS))
    parser.add_argument("--runs", type=int, default=None, help="timed calls per backend (default 10, quick 5)")
    parser.add_argument("--backends", default=None, help="comma-separated subset of " + ",".join(BACKENDS) +
                        f" (default: all; quick: all but {INDUCTOR_DYNAMIC})")
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                        help="measure peak RSS per workload and backend in fresh processes (default: on unless --quick)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--png", type=Path, default=None, help="also draw a bar chart here (default: beside --json)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    default_backends = [b for b in BACKENDS if not (args.quick and b == INDUCTOR_DYNAMIC)]
    backends = [b for b in args.backends.split(",") if b] if args.backends else default_backends
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}")
    names = args.workloads.split(",") if args.workloads else (["resnet50-b1"] if args.quick else ISSUE_WORKLOADS)
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}")
    runs = args.runs or (5 if args.quick else 10)
    measure_rss = (not args.quick) if args.rss is None else args.rss

    threads = torch.get_num_threads()
    peak = {1: measure_peak_gflops(1), threads: measure_peak_gflops(threads)}
    peak_gflops = max(peak[threads].values())
    rows = []
    for name in names:
        workload_rows = run_workload(WORKLOADS[name](), backends, runs, warmup=1 if args.quick else 2,
                                     peak_gflops=peak_gflops)
        for row in workload_rows:
            row["peak_rss_mib"] = peak_rss_mib(name, row["backend"]) if measure_rss else None
        rows += workload_rows

    print(f"torch {torch.__version__}, {threads} threads, aspen DSEs: {aspen_torch.runtime_stats()['num_dses']}; "
          f"medians of {runs} interleaved runs (min-max)")
    print(f"machine peak now, GFLOP/s (GEMM 2048^3 / conv 3x3 128ch): 1 thread {peak[1]['gemm']:.0f} / "
          f"{peak[1]['conv']:.0f}, {threads} threads {peak[threads]['gemm']:.0f} / {peak[threads]['conv']:.0f}")
    table = [[r["workload"], r["backend"], f"{r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f})",
              f"{r['gflops']:.0f}", f"{100 * r['fraction_of_peak']:.0f}%",
              f"{r['first_call_s']:.1f}" if r["backend"] != "eager" else "-",
              f"{r['peak_rss_mib']:.0f}" if r["peak_rss_mib"] is not None else "-",
              f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-"] for r in rows]
    print(tabulate(table, headers=["workload", "backend", "median ms (min-max)", "GFLOP/s", "of peak",
                                   "first call s", "peak RSS MiB", "vs eager"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"peak_gflops": {str(k): v for k, v in peak.items()}, "rows": rows}, indent=2))
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    if png is not None:
        print(f"bar chart: {png}" if write_bar_chart(rows, png) else "bar chart skipped: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
