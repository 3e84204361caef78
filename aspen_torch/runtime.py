"""The process-wide runtime: one set of DSEs and one ready pool shared by every compiled model."""
from __future__ import annotations

import concurrent.futures
import os
import threading
from pathlib import Path
from typing import Optional

from . import _C
from .options import default_num_dses


def dse_cpu_order() -> list[int]:
    """The CPUs this process may run on, one per physical core first and SMT siblings after,
    so DSE i gets a core of its own while there are cores."""
    def sibling_rank(cpu: int) -> int:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            siblings = _cpu_list(path.read_text())
        except (OSError, ValueError):
            return 0
        return siblings.index(cpu) if cpu in siblings else 0

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return sorted(cpus, key=lambda cpu: (sibling_rank(cpu), cpu))


def _cpu_list(text: str) -> list[int]:
    """Parses the kernel's CPU list format, e.g. "0-3,8"."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def pin_dses_by_default() -> bool:
    """DSEs are pinned one per CPU unless ASPEN_PIN_DSES=0 (e.g. several aspen processes
    sharing a machine without separate cpusets)."""
    return os.environ.get("ASPEN_PIN_DSES", "1") != "0"


class SharedRuntime:
    """Creates the C++ runtime on first use; every compiled partition runs on it."""

    # Request threads only wait (GIL released) while DSEs compute, so a few dozen are cheap.
    MAX_REQUEST_THREADS = 32

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runtime: Optional[_C.Runtime] = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        os.register_at_fork(after_in_child=self._start_afresh_after_fork)

    def _start_afresh_after_fork(self) -> None:
        # fork() copies only the calling thread: in the child the DSEs and request threads are
        # gone (the runtime's copy would wait on them forever) and a lock another thread held
        # stays locked. The first use in the child starts a runtime of its own.
        self._lock = threading.Lock()
        self._runtime = None
        self._executor = None

    def request_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.MAX_REQUEST_THREADS, thread_name_prefix="aspen-request")
            return self._executor

    def get(self, num_dses: Optional[int] = None) -> "_C.Runtime":
        with self._lock:
            if self._runtime is None:
                self._runtime = _C.Runtime(num_dses or default_num_dses())
                if pin_dses_by_default():
                    self._runtime.set_dse_cpus(dse_cpu_order())
            elif num_dses is not None and num_dses != self._runtime.num_dses:
                self._runtime.set_num_dses(num_dses)
            return self._runtime

    def stats(self) -> dict:
        with self._lock:
            # One row per DSE (none before the runtime starts).
            counts = self._runtime.dse_counts() if self._runtime is not None else []
            cpus = list(self._runtime.dse_cpus) if self._runtime is not None else []
        run, opened, taken, taken_over = (list(column) for column in zip(*counts)) if counts else ([], [], [], [])
        return {"num_dses": len(counts), "tiles_per_dse": run, "tiles_opened_per_dse": opened,
                "parts_taken_per_dse": taken, "parts_taken_over_per_dse": taken_over, "dse_cpus": cpus}


SHARED_RUNTIME = SharedRuntime()


def set_num_dses(num_dses: int) -> None:
    """Adds or removes DSEs of the shared runtime; a removed DSE finishes its current tile first."""
    if not isinstance(num_dses, int) or not 1 <= num_dses <= _C.MAX_DSES:
        raise ValueError(f"aspen: num_dses must be an int in [1, {_C.MAX_DSES}], got {num_dses!r}")
    SHARED_RUNTIME.get(num_dses)


def set_dse_pinning(enabled: bool) -> None:
    """Pins DSE i to the i-th CPU of dse_cpu_order() (wrapping around), or lets DSEs run on
    any CPU. On by default: the OS otherwise may stack two DSEs on one core while another
    process runs on the other (docs/performance_history.md, "With another process on one core")."""
    if not isinstance(enabled, bool):
        raise ValueError(f"aspen: set_dse_pinning takes a bool, got {enabled!r}")
    SHARED_RUNTIME.get().set_dse_cpus(dse_cpu_order() if enabled else [])


def set_tile_sharing(mode: str) -> None:
    """When a DSE runs a tile that has row parts (linear layers' row blocks) part by part,
    so that idle DSEs can take parts of it: "when_preempted" (default: while the DSE loses
    time to other threads on its core, where a whole tile would hold up every DSE that
    waits for it), "always" or "never". While a DSE loses its core it computes its parts
    speculatively, and an idle DSE takes over a part whose DSE is descheduled; for tests,
    "always_with_backups" does so for every part at once."""
    if mode not in ("when_preempted", "always", "never", "always_with_backups"):
        raise ValueError("aspen: tile sharing is 'when_preempted', 'always', 'never' or 'always_with_backups', "
                         f"got {mode!r}")
    SHARED_RUNTIME.get().tile_sharing = mode


def runtime_stats() -> dict:
    """{"num_dses": DSEs now, "tiles_per_dse": tiles each DSE ran since the runtime started,
    "tiles_opened_per_dse": tiles each ran in parts while preempted (set_tile_sharing),
    "parts_taken_per_dse": parts each took from other DSEs' open tiles,
    "parts_taken_over_per_dse": parts each ran for a DSE descheduled while running them,
    "dse_cpus": the CPUs DSE i is pinned to round-robin, [] when unpinned}."""
    return SHARED_RUNTIME.stats()
