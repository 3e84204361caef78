"""BERT-base (transformers, random weights, nothing downloaded) on aspen: compile, check
against eager, time both, and show how the tile graph looks.

    pip install transformers && python examples/bert.py [--batch 8] [--seq 128]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

import aspen_torch  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from bench import median_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval()
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    mask[args.batch // 2:, args.seq * 3 // 4:] = 0  # padded sequences

    compiled = torch.compile(model, backend="aspen", options={"strict": True})
    with torch.no_grad():
        start = time.perf_counter()
        out = compiled(input_ids=ids, attention_mask=mask)
        print(f"compile + first call: {time.perf_counter() - start:.1f} s")
        ref = model(input_ids=ids, attention_mask=mask)
        for name in ("last_hidden_state", "pooler_output"):
            err = ((out[name] - ref[name]).abs().max() / ref[name].abs().max()).item()
            print(f"{name}: max relative error vs eager {err:.1e}")
            torch.testing.assert_close(out[name], ref[name], rtol=1e-4, atol=2e-4)

        aspen_ms = median_seconds(lambda: compiled(input_ids=ids, attention_mask=mask), 5) * 1e3
        eager_ms = median_seconds(lambda: model(input_ids=ids, attention_mask=mask), 5) * 1e3
        print(f"B{args.batch} S{args.seq}: aspen {aspen_ms:.1f} ms, eager {eager_ms:.1f} ms "
              f"({eager_ms / aspen_ms:.2f}x)")

        with aspen_torch.trace("bert_trace.json") as trace:
            compiled(input_ids=ids, attention_mask=mask)
    busy = {dse: round(ns / 1e6, 1) for dse, ns in trace.busy_ns_per_dse().items()}
    print(f"traced call: {len(trace.events)} tiles over {trace.span_ns / 1e6:.1f} ms, busy ms per DSE {busy}")
    print("per-tile timeline written to bert_trace.json (open it in https://ui.perfetto.dev)")
    print(aspen_torch.explain(model, input_ids=ids, attention_mask=mask, options={"strict": True}))


if __name__ == "__main__":
    main()
