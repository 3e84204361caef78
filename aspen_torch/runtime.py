"""The process-wide runtime: one set of DSEs and one ready pool shared by every compiled model."""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Optional

from . import _C
from .options import default_num_dses


class SharedRuntime:
    """Creates the C++ runtime on first use; every compiled partition runs on it."""

    # Request threads only wait (GIL released) while DSEs compute, so a few dozen are cheap.
    MAX_REQUEST_THREADS = 32

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runtime: Optional[_C.Runtime] = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None

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
            elif num_dses is not None and num_dses != self._runtime.num_dses:
                self._runtime.set_num_dses(num_dses)
            return self._runtime

    def stats(self) -> dict:
        with self._lock:
            if self._runtime is None:
                return {"num_dses": 0, "tiles_per_dse": []}
            return {"num_dses": self._runtime.num_dses, "tiles_per_dse": list(self._runtime.tiles_per_dse())}


SHARED_RUNTIME = SharedRuntime()


def set_num_dses(num_dses: int) -> None:
    """Adds or removes DSEs of the shared runtime; a removed DSE finishes its current tile first."""
    if not isinstance(num_dses, int) or not 1 <= num_dses <= _C.MAX_DSES:
        raise ValueError(f"aspen: num_dses must be an int in [1, {_C.MAX_DSES}], got {num_dses!r}")
    SHARED_RUNTIME.get(num_dses)


def runtime_stats() -> dict:
    """{"num_dses": DSEs now, "tiles_per_dse": tiles each DSE ran since the runtime started}."""
    return SHARED_RUNTIME.stats()
