"""ResNet-50 with its conv relus fused into oneDNN against the same model running them as passes.

Two compiled copies of one model (same weights, strict, 2 DSEs) in one process: the second is
fed one image holding a NaN first, so its programs run their relus as NaN-keeping passes from
then on (docs/design.md, "Fused relus and lost NaNs"). Rounds alternate which copy goes first;
in each, a copy is called twice and its second call timed. Prints medians and the per-round
ratio fused / passes.
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time

import torch

from aspen_torch.execute import CompiledPartition
from aspen_torch.models import resnet50


def relus_fused_per_partition() -> list[bool]:
    """`relus_fused` of every aspen partition in the process."""
    return sorted(p.relus_fused for p in gc.get_objects() if type(p) is CompiledPartition)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = resnet50().eval()
    fused = torch.compile(model, backend="aspen", options={"strict": True})
    passes = torch.compile(copy.deepcopy(model), backend="aspen", options={"strict": True})
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=1e-3, atol=1e-3)
        poisoned = x.clone()
        poisoned[0, 0, 10, 10] = float("nan")
        assert passes(poisoned)[0].isnan().all(), "the NaN image's logits are NaN, as in eager"
        torch.testing.assert_close(passes(x), expected, rtol=1e-3, atol=1e-3)
        states = relus_fused_per_partition()
        assert states == [False] * (len(states) // 2) + [True] * (len(states) // 2), states

        times: dict[str, list[float]] = {"fused": [], "passes": []}
        for r in range(args.rounds):
            order = [("fused", fused), ("passes", passes)]
            for name, compiled in order if r % 2 == 0 else order[::-1]:
                compiled(x)
                start = time.perf_counter()
                compiled(x)
                times[name].append(time.perf_counter() - start)
    ratio = statistics.median(f / p for f, p in zip(times["fused"], times["passes"]))
    print(f"ResNet-50 B{args.batch}, {args.rounds} rounds: fused {1e3 * statistics.median(times['fused']):.1f} ms, "
          f"passes {1e3 * statistics.median(times['passes']):.1f} ms, per-round fused / passes {ratio:.3f}")


if __name__ == "__main__":
    main()
