"""transformers model families (small configs, random weights, nothing downloaded) on
aspen: for each, the largest difference from eager, the tile graph's size and the ops
that run in eager. What runs whole here is also checked in strict mode by
tests/test_hf_models.py.

    pip install transformers && python examples/model_zoo.py [family ...]
"""
from __future__ import annotations

import argparse
import functools
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from tabulate import tabulate  # noqa: E402

import aspen_torch  # noqa: E402
from aspen_torch.models.transformers_zoo import families  # noqa: E402


def main() -> None:
    known = families()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[], *known], help="families to run (default: all)")
    args = parser.parse_args()
    logging.getLogger("aspen_torch").setLevel(logging.ERROR)  # fallbacks are listed in the table instead
    rows = []
    for name in args.names or known:
        torch.manual_seed(0)
        model, inputs = known[name].make()
        report = aspen_torch.CompileReport()
        with torch.no_grad():
            expected = model(*inputs)
            torch._dynamo.reset()
            actual = torch.compile(model, backend=functools.partial(aspen_torch.aspen_backend, report=report))(*inputs)
        relative = ((actual - expected).abs().max() / expected.abs().max()).item()
        rows.append([name, f"{relative:.1e}", report.num_partitions, report.num_tiles,
                     ", ".join(f"{op} x{n}" for op, n in sorted(report.fallback_ops.items())) or "-",
                     known[name].note])
        torch._dynamo.reset()
    print(tabulate(rows, headers=["family", "max |diff| / max |eager|", "aspen partitions", "tiles",
                                  "ops in eager", "what it exercises"]))


if __name__ == "__main__":
    main()
