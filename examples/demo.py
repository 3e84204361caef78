"""The README's first command: compile ResNet-50 with aspen, check it against eager, print the speedup table."""
from __future__ import annotations

import pathlib
import sys

import torch

import aspen_torch
from aspen_torch.models import resnet50

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import bench  # noqa: E402


def main() -> int:
    torch.manual_seed(0)
    model = resnet50()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        compiled = torch.compile(model, backend="aspen", options={"strict": True})
        out, expected = compiled(x), model(x)
    err = ((out - expected).abs().max() / expected.abs().max()).item()
    print(f"ResNet-50 B1 on aspen matches eager: max relative error {err:.1e}")
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    report = aspen_torch.explain(model, x)
    print(report)
    print("runtime:", aspen_torch.runtime_stats())
    print()
    return bench.main(["--quick"])


if __name__ == "__main__":
    sys.exit(main())
