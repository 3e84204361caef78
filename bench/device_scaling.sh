#!/usr/bin/env bash
# Issue 5's scaling run past 2 cores, for a session lent a machine with more cores (the
# device tool's 16-core machines; CI never runs this). One call from the repo root:
#     run(command="bench/device_scaling.sh", timeout_s=560)
# builds the extension against that machine's own torch, then times ResNet-50 B1 and
# BERT-base B1 under eager, inductor+freezing and aspen at 4, 8 and 16 threads (aspen's DSEs
# follow ATen's thread count). Tables print; JSON and PNG per thread count land in $OUT
# (bench/results here). Other thread counts: bench/device_scaling.sh 2 4.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-bench/results}
if ! python3 -m pip install -q --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1; then
    tail -40 "$out/build.log"
    exit 1
fi
thread_counts=("$@")
[ ${#thread_counts[@]} -gt 0 ] || thread_counts=(4 8 16)
for t in "${thread_counts[@]}"; do
    OMP_NUM_THREADS=$t python3 bench/bench.py --workloads resnet50-b1,bert-b1 \
        --backends eager,inductor+freezing,aspen --runs 10 --no-rss --json "$out/scaling_$t.json"
done
