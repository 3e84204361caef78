"""The C++ runtime alone: ready pool, DSEs, dependency counting, errors, resizing, pinning."""
from __future__ import annotations

import os
import random
import threading

import pytest
import torch

from aspen_torch import _C
from aspen_torch.apu.tile_graph import TileKind
from aspen_torch.runtime import _cpu_list, dse_cpu_order

RECORD, COPY, PROBE = int(TileKind.RECORD), int(TileKind.COPY), int(TileKind.THREAD_PROBE)


def random_dag(rng: random.Random, num_tiles: int, edge_prob: float) -> list[tuple[int, int]]:
    order = list(range(num_tiles))
    rng.shuffle(order)  # tile ids are not a topological order
    return [(order[i], order[j]) for i in range(num_tiles) for j in range(i + 1, num_tiles) if rng.random() < edge_prob]


def record_program(num_tiles: int, edges: list[tuple[int, int]]):
    log = torch.zeros(1 + 2 * num_tiles, dtype=torch.int64)
    tiles = [(RECORD, [log], [i], [], f"t{i}") for i in range(num_tiles)]
    return _C.make_program(tiles, edges), log


def check_log(log: torch.Tensor, num_tiles: int, edges: list[tuple[int, int]]) -> list[int]:
    assert log[0].item() == num_tiles
    ran = log[1:1 + 2 * num_tiles].view(-1, 2)
    order = ran[:, 0].tolist()
    assert sorted(order) == list(range(num_tiles)), "every tile runs exactly once"
    position = {t: i for i, t in enumerate(order)}
    for parent, child in edges:
        assert position[parent] < position[child], f"tile {child} ran before its input {parent}"
    return ran[:, 1].tolist()


@pytest.mark.parametrize("num_dses", [1, 2, 4])
def test_random_dags_run_each_tile_once_in_dependency_order(num_dses):
    rng = random.Random(num_dses)
    runtime = _C.Runtime(num_dses)
    for _ in range(1500):
        n = rng.randint(1, 24)
        edges = random_dag(rng, n, rng.choice([0.0, 0.1, 0.3, 0.8]))
        program, log = record_program(n, edges)
        runtime.run(program)
        check_log(log, n, edges)


def test_wide_graph_spreads_over_dses():
    # Tiles with real work (~1 ms copies), so the run outlasts any DSE's wake-up.
    runtime = _C.Runtime(2)
    src = torch.randn(1 << 20)
    outs = [torch.empty_like(src) for _ in range(64)]
    program = _C.make_program([(COPY, [o, src], [], [], "copy") for o in outs], [])
    before = [run for run, *_ in runtime.dse_counts()]
    runtime.run(program)
    ran = [run - b for (run, *_), b in zip(runtime.dse_counts(), before)]
    assert sum(ran) == 64 and all(n > 0 for n in ran), ran
    assert all(torch.equal(o, src) for o in outs)


def random_request_clients(runtime, num_clients: int, keep_going) -> tuple[list, list]:
    """Threads that run random DAG requests on `runtime` and check each, while
    keep_going(requests_done) is true. Returns (threads, errors)."""
    errors: list = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        done = 0
        try:
            while keep_going(done):
                n = rng.randint(1, 40)
                edges = random_dag(rng, n, 0.15)
                program, log = record_program(n, edges)
                runtime.run(program)
                check_log(log, n, edges)
                done += 1
        except Exception as e:  # surfaced by the caller; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(num_clients)]
    for t in threads:
        t.start()
    return threads, errors


def test_program_reuse_and_concurrent_requests():
    threads, errors = random_request_clients(_C.Runtime(3), 4, lambda done: done < 200)
    for t in threads:
        t.join()
    assert not errors, errors


def test_resize_while_requests_run():
    runtime = _C.Runtime(1)
    stop = threading.Event()
    threads, errors = random_request_clients(runtime, 3, lambda done: not stop.is_set())
    for size in [2, 1, 3, 1, 4, 2] * 5:
        runtime.set_num_dses(size)
        assert runtime.num_dses == size
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors


def test_tile_error_fails_that_request_only():
    runtime = _C.Runtime(2)
    out, bad = torch.zeros(4), torch.ones(5)
    ok_log = torch.zeros(1 + 2 * 3, dtype=torch.int64)
    tiles = [(RECORD, [ok_log], [0], [], "before"), (COPY, [out, bad], [], [], "aten.bad_copy"),
             (RECORD, [ok_log], [2], [], "after")]
    program = _C.make_program(tiles, [(0, 1), (1, 2)])
    with pytest.raises(RuntimeError, match=r"tile 1 \(aten.bad_copy\) failed"):
        runtime.run(program)
    assert ok_log[0].item() == 1, "tiles after a failed tile are skipped"
    # The runtime stays usable.
    program, log = record_program(50, [(i, i + 1) for i in range(49)])
    runtime.run(program)
    check_log(log, 50, [(i, i + 1) for i in range(49)])


def test_bad_programs_are_rejected():
    log = torch.zeros(9, dtype=torch.int64)
    tiles = [(RECORD, [log], [i], [], f"t{i}") for i in range(3)]
    with pytest.raises(RuntimeError, match="cycle"):
        _C.make_program(tiles, [(0, 1), (1, 2), (2, 0)])
    with pytest.raises(RuntimeError, match="outside"):
        _C.make_program(tiles, [(0, 7)])
    with pytest.raises(RuntimeError, match="depends on itself"):
        _C.make_program(tiles, [(1, 1)])
    with pytest.raises(RuntimeError, match="unknown tile kind"):
        _C.make_program([(99, [log], [], [], "x")], [])
    with pytest.raises(RuntimeError, match="no output"):
        _C.make_program([(COPY, [None], [], [], "x")], [])
    with pytest.raises(RuntimeError, match="num_dses"):
        _C.Runtime(1).set_num_dses(-1)


def test_empty_program_completes():
    _C.Runtime(1).run(_C.make_program([], []))


def test_dse_runs_aten_single_threaded_and_caller_keeps_its_threads():
    before = torch.get_num_threads()
    runtime = _C.Runtime(2)
    assert torch.get_num_threads() == before
    probes = [torch.zeros(2, dtype=torch.int64) for _ in range(8)]
    runtime.run(_C.make_program([(PROBE, [p], [], [], "probe") for p in probes], []))
    for p in probes:
        assert p.tolist() == [1, 1], "at::parallel_for inside a DSE must use one thread"


def test_caller_copies_frame_the_request_and_keep_the_callers_threads():
    runtime = _C.Runtime(2)
    before = torch.get_num_threads()
    x, staged, result, y = torch.randn(1 << 18), torch.empty(1 << 18), torch.empty(1 << 18), torch.empty(1 << 18)
    program = _C.make_program([(COPY, [result, staged], [], [], "copy")], [])
    runtime.run(program, copy_in=[(x, staged)], copy_out=[(result, y)])
    assert torch.equal(y, x), "copy_in must land before the tiles run and copy_out after they finish"
    assert torch.get_num_threads() == before


def test_one_openmp_runtime_is_loaded():
    _C.Runtime(1)
    with open("/proc/self/maps") as maps:
        gomp = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(gomp) == 1, gomp


def _new_threads(action) -> list[int]:
    """Thread ids that `action` starts in this process, in creation order."""
    before = set(os.listdir("/proc/self/task"))
    action()
    return sorted((int(t) for t in set(os.listdir("/proc/self/task")) - before))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"),
                    reason="thread affinity is Linux-only")
def test_dses_are_pinned_round_robin_and_unpinned_on_request():
    allowed = os.sched_getaffinity(0)
    order = dse_cpu_order()
    assert sorted(order) == sorted(allowed)
    holder = []
    first = _new_threads(lambda: holder.append(_C.Runtime(2)))
    runtime = holder[0]
    assert len(first) == 2 and runtime.dse_cpus == []
    assert all(os.sched_getaffinity(t) == allowed for t in first)

    runtime.set_dse_cpus(order)
    later = _new_threads(lambda: runtime.set_num_dses(len(order) + 1))  # wraps around the CPUs
    dses = first + later
    assert [os.sched_getaffinity(t) for t in dses] == [{order[i % len(order)]} for i in range(len(dses))]
    edges = random_dag(random.Random(0), 50, 0.1)
    program, log = record_program(50, edges)
    runtime.run(program)
    check_log(log, 50, edges)

    runtime.set_dse_cpus([])
    assert all(os.sched_getaffinity(t) == allowed for t in dses)
    with pytest.raises(RuntimeError, match="not one this process may run on"):
        runtime.set_dse_cpus([max(allowed) + 1])


def test_cpu_list_format():
    assert _cpu_list("0-3,8\n") == [0, 1, 2, 3, 8]
    assert _cpu_list("5") == [5]


def test_shared_runtime_pins_its_dses_unless_told_not_to(monkeypatch):
    import aspen_torch
    from aspen_torch.runtime import pin_dses_by_default

    monkeypatch.delenv("ASPEN_PIN_DSES", raising=False)
    assert pin_dses_by_default()
    monkeypatch.setenv("ASPEN_PIN_DSES", "0")
    assert not pin_dses_by_default()
    aspen_torch.set_num_dses(2)
    try:
        aspen_torch.set_dse_pinning(False)
        assert aspen_torch.runtime_stats()["dse_cpus"] == []
    finally:
        aspen_torch.set_dse_pinning(True)
    assert aspen_torch.runtime_stats()["dse_cpus"] == dse_cpu_order()
    with pytest.raises(ValueError, match="bool"):
        aspen_torch.set_dse_pinning("yes")
