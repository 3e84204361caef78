"""When a compiled graph meets an input it has no plan for (a new shape of a graph with
symbolic sizes, another weight set of a graph shared by instances of one model class):
compile a plan for it now, or run it in eager until it has earned one."""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Generic, Hashable, Optional, TypeVar

from .report import CompileReport

log = logging.getLogger("aspen_torch")

T = TypeVar("T")
V = TypeVar("V")


class LruPlans(Generic[V]):
    """Plans by input key, at most `capacity` of them, the least recently used dropped; safe
    across threads. `discard` takes no lock: a weakref callback may call it at any point of
    another method on the same thread, and one OrderedDict.pop is one step under the GIL."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._plans: collections.OrderedDict[Hashable, V] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[V]:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def put(self, key: Hashable, plan: V) -> None:
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self._capacity:
                self._plans.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        self._plans.pop(key, None)

    def discard_where(self, stale: Callable[[V], bool]) -> None:
        with self._lock:
            for key in [k for k, plan in list(self._plans.items()) if stale(plan)]:
                self._plans.pop(key, None)

    def has_room(self) -> bool:
        return len(self._plans) < self._capacity


class RecompilePolicy:
    """A compile costs 0.2-3 s. A decoder's KV cache has a new length every token, and an
    ensemble of more model instances than the plans kept would recompile on every call; so
    an input with no plan compiles at once only while `free_slot` says the plans kept have
    room, or before any compile was timed. Otherwise it runs in eager until the eager time
    spent on it reaches the last compile's time, and then compiles (ski rental: an input
    never costs more than twice the better of always-eager and compile-at-once, which only
    hindsight knows). `always` (option recompiles="always", strict mode) compiles at once.

    A compile runs outside the caller's lock, so calls that have a plan never wait for one
    (a server's known shapes keep their latency while a new one compiles); compiles of one
    policy run one at a time. While an input compiles, other calls with it run in eager, or
    under `always` wait for that compile."""

    MAX_COLD_KEYS = 4096  # eager seconds kept per input without a plan (least recently used dropped)
    clock = staticmethod(time.perf_counter)  # seconds; tests count calls instead

    def __init__(self, always: bool, what: str, report: CompileReport) -> None:
        self._always = always
        self._what = what  # names the inputs in the log: "input shape", "weight set"
        self._report = report
        self._compile_seconds: Optional[float] = None  # of the last compile: the price of a new one
        self._eager_seconds: collections.OrderedDict[Hashable, float] = collections.OrderedDict()
        self._compiling: collections.Counter[Hashable] = collections.Counter()  # claimed, not done
        self._warned = False
        self._lock = threading.Lock()
        self._compile_lock = threading.Lock()

    def claim_compile(self, key: Hashable, free_slot: bool) -> bool:
        """Whether the caller compiles `key` now; if True it must call compile(key, ...) next."""
        with self._lock:
            claimed = self._always or (self._compiling[key] == 0 and (
                free_slot or self._compile_seconds is None or
                self._eager_seconds.get(key, 0.0) >= self._compile_seconds))
            if claimed:
                self._compiling[key] += 1
            return claimed

    def compile(self, key: Hashable, find: Callable[[], Optional[T]], make: Callable[[], T]) -> T:
        """`make()`'s plan, or `find()`'s if another thread made it meanwhile."""
        try:
            with self._compile_lock:
                found = find()
                if found is not None:
                    return found
                start = self.clock()
                made = make()
                seconds = self.clock() - start
            with self._lock:
                self._compile_seconds = seconds
                self._eager_seconds.pop(key, None)
            return made
        finally:
            with self._lock:
                self._compiling[key] -= 1
                if not self._compiling[key]:
                    del self._compiling[key]

    def run_in_eager(self, key: Hashable, run: Callable[[], Any]) -> Any:
        with self._lock:
            first, self._warned = not self._warned, True
            self._report.cold_calls += 1
        if first:
            log.warning("aspen: a new %s runs in eager until the time spent on it pays for compiling it "
                        "(%.2f s); options={'recompiles': 'always'} compiles at once", self._what,
                        self._compile_seconds)
        log.debug("aspen: %s %s runs in eager (not hot yet)", self._what, key)
        start = self.clock()
        result = run()
        spent = self.clock() - start
        with self._lock:
            self._eager_seconds[key] = self._eager_seconds.pop(key, 0.0) + spent
            while len(self._eager_seconds) > self.MAX_COLD_KEYS:
                self._eager_seconds.popitem(last=False)
        return result
