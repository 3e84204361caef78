#!/usr/bin/env bash
# Runs tests (meant for the runtime's own: random DAGs, many-DSE stress, adding and removing
# DSEs while requests run, failing tiles, tenants, the memory plan's reuse edges) against an
# extension built with AddressSanitizer or ThreadSanitizer. Python and torch are not instrumented, so
# the sanitizer's runtime is preloaded; the build goes to a scratch directory and leaves the
# regular in-place build alone.
#   tests/sanitize.sh address tests/test_runtime.py tests/test_memory_plan.py tests/test_tenants.py
#   tests/sanitize.sh thread tests/test_runtime.py
# (arguments after the first go to pytest; -s shows a sanitizer's report, which pytest's
# output capture would otherwise swallow when the sanitizer ends the process)
set -euo pipefail
kind=${1:?usage: tests/sanitize.sh address|thread [pytest arguments]}
cd "$(dirname "$0")/.."
case $kind in
  address) runtime=libasan.so; export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 ;;
  # One OpenMP thread: eager reference runs would otherwise use libgomp's team, whose
  # barriers TSan cannot see (the DSEs run one intra-op thread each anyway).
  thread) runtime=libtsan.so; export OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 suppressions=$PWD/tests/tsan.supp" ;;
  *) echo "unknown sanitizer: $kind" >&2; exit 2 ;;
esac
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/aspen_torch"
(cd aspen_torch && find . -name '*.py' -exec cp --parents {} "$scratch/aspen_torch/" \;)
ASPEN_SANITIZE=$kind python setup.py -q build_ext --build-lib "$scratch" --build-temp "$scratch/tmp" >/dev/null
# libstdc++ is preloaded beside it: the sanitizer finds the real __cxa_throw only in a
# library loaded before it (python itself does not link libstdc++).
# -P keeps the working directory off sys.path: from the repository root it would import the
# regular, uninstrumented extension, and the sanitizer would see none of the runtime's code.
export PYTHONPATH="$scratch"
export LD_PRELOAD="$(gcc -print-file-name=$runtime) $(gcc -print-file-name=libstdc++.so.6)"
python -P -c "import aspen_torch._C as C, sys; sys.exit(0 if C.__file__.startswith('$scratch') else f'sanitized extension not loaded: {C.__file__}')"
python -P -m pytest -q -p no:cacheprovider "${@:2}"
