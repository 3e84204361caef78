"""ResNet-50's convolutions in aspen's tiles against oneDNN's own one-thread rate.

    python bench/conv_floor.py [--batch 32] [--calls 5] [--repeats 15] [--cold-weights]

Traces aspen calls (2 DSEs, medians of --calls) and sums each convolution's DSE time, then
times every convolution alone on one thread, one image at a time: oneDNN's kernel on the
weight packed as aspen packs it, with a bias as batch-norm folding leaves, its output
allocated by oneDNN (no zero fill, no epilogue pass), the input hot in cache. The sum of
those times over the batch, shared by the DSEs, bounds the call's span from below for these
kernels: where aspen's convolution time sits near it, a faster call needs faster kernels,
not another schedule. Rows group the convolutions by shape, largest difference first.

--cold-weights: each call alone takes the next of enough packed copies of its weight to
span COLD_WEIGHT_BYTES, beyond a core's L2, so the weights come from L3 as in a batch-1 call,
which reads each weight once; the default keeps them hot, as a large batch reuses them.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from tabulate import tabulate

from aspen_torch.apu.prepack import pack_conv_weight
from aspen_torch.models import resnet50
from aspen_torch.trace import trace

COLD_WEIGHT_BYTES = 64 << 20  # ResNet-50 reads ~100 MiB of weights per call


def conv_shapes(model: torch.nn.Module) -> list[tuple[tuple[int, ...], torch.nn.Conv2d]]:
    """(input shape of one image, module) of every convolution, in the order they run."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((tuple(args[0].shape[1:]), mod)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    return seen


def one_thread_seconds(image_shape: tuple[int, ...], conv: torch.nn.Conv2d, repeats: int,
                       cold_weights: bool = False) -> tuple[float, float]:
    """Median seconds of oneDNN's convolution of one image on one thread, and its FLOPs."""
    x = torch.randn(1, *image_shape).contiguous(memory_format=torch.channels_last)
    weight = conv.weight.detach()
    bias = torch.randn(weight.shape[0])
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    copies = max(2, -(-COLD_WEIGHT_BYTES // (weight.numel() * weight.element_size()))) if cold_weights else 1
    packs = [pack_conv_weight(weight if c == 0 else torch.randn_like(weight), *args, list(x.shape))
             for c in range(copies)]
    out = torch.ops.mkldnn._convolution_pointwise(x, packs[0], bias, *args, "none", [], None)
    times = []
    for i in range(repeats + 3):
        packed = packs[i % copies]
        start = time.perf_counter()
        torch.ops.mkldnn._convolution_pointwise(x, packed, bias, *args, "none", [], None)
        if i >= 3:
            times.append(time.perf_counter() - start)
    flops = 2.0 * out.numel() * weight[0].numel()
    return statistics.median(times), flops


def traced_conv_ms(model: torch.nn.Module, batch: int, calls: int) -> tuple[dict[str, float], float, dict[int, float]]:
    """Medians over `calls` traced aspen calls: DSE ms per convolution node, the call's span,
    and busy ms per DSE."""
    compiled = torch.compile(model, backend="aspen", options={"strict": True})
    x = torch.randn(batch, 3, 224, 224)
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    spans, busy = [], collections.defaultdict(list)
    with torch.no_grad():
        for _ in range(3):
            compiled(x)
        for _ in range(calls):
            with trace() as recorded:
                compiled(x)
            call: dict[str, float] = collections.Counter()
            for e in recorded.events:
                if e.op == "aten.convolution.default":
                    call[e.node] += (e.end_ns - e.start_ns) / 1e6
            for node, ms in call.items():
                per_node[node].append(ms)
            spans.append(recorded.span_ns / 1e6)
            for dse, ns in recorded.busy_ns_per_dse().items():
                busy[dse].append(ns / 1e6)
    median = statistics.median
    return ({node: median(ms) for node, ms in per_node.items()}, median(spans),
            {dse: median(ms) for dse, ms in sorted(busy.items())})


def node_order(name: str) -> int:
    """aten names a graph's convolutions convolution, convolution_1, ... in the order they run."""
    _, _, index = name.partition("_")
    return int(index) if index else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=5, help="traced aspen calls (medians)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each convolution alone (medians)")
    parser.add_argument("--cold-weights", action="store_true",
                        help="time each convolution alone with its weights coming from L3 (see above)")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    model = resnet50().eval()
    traced, span_ms, busy = traced_conv_ms(model, args.batch, args.calls)
    shapes = conv_shapes(model)
    if len(traced) != len(shapes):
        raise SystemExit(f"the trace has {len(traced)} convolutions, the model {len(shapes)}")

    torch.set_num_threads(1)
    groups: dict[str, list[float]] = {}  # shape -> [count, traced ms, alone ms, GFLOP]
    for node, (image_shape, conv) in zip(sorted(traced, key=node_order), shapes):
        seconds, flops = one_thread_seconds(image_shape, conv, args.repeats, args.cold_weights)
        key = (f"{image_shape[0]}x{image_shape[1]}x{image_shape[2]} -> {conv.out_channels}, "
               f"{conv.kernel_size[0]}x{conv.kernel_size[1]} stride {conv.stride[0]}")
        row = groups.setdefault(key, [0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += traced[node]
        row[2] += seconds * 1e3 * args.batch
        row[3] += flops * args.batch / 1e9

    rows = [[key, n, f"{t:.1f}", f"{gf / t * 1e3:.0f}", f"{a:.1f}", f"{gf / a * 1e3:.0f}", f"{t - a:+.1f}"]
            for key, (n, t, a, gf) in sorted(groups.items(), key=lambda kv: kv[1][2] - kv[1][1])]
    total_traced = sum(r[1] for r in groups.values())
    total_alone = sum(r[2] for r in groups.values())
    gflop = sum(r[3] for r in groups.values())
    rows.append(["all convolutions", sum(r[0] for r in groups.values()), f"{total_traced:.1f}",
                 f"{gflop / total_traced * 1e3:.0f}", f"{total_alone:.1f}", f"{gflop / total_alone * 1e3:.0f}",
                 f"{total_traced - total_alone:+.1f}"])
    print(f"ResNet-50 B{args.batch}, aspen {len(busy)} DSEs: span {span_ms:.1f} ms, busy "
          + " / ".join(f"{ms:.1f}" for ms in busy.values()) + " ms")
    alone = "alone, 1 thread, weights from L3 ms" if args.cold_weights else "alone, 1 thread ms"
    print(tabulate(rows, headers=["input (C x H x W) -> out channels", "convs", "aspen DSE ms", "GFLOP/s",
                                  alone, "GFLOP/s", "aspen - alone ms"]))
    print(f"floor of the span from the convolutions alone on {len(busy)} DSEs: {total_alone / len(busy):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
