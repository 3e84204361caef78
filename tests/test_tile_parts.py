"""Row parts of open tiles: a DSE runs a tile part by part from the front while idle DSEs
take parts from the back (csrc/open_tiles.h); the last part to finish releases the tile's
children. A DSE losing its core runs its parts speculatively and idle DSEs take over the
parts of a descheduled one (csrc/speculative_parts.h). Random DAGs of tiles with parts,
resizing, failing parts, bad parts, and the preemption meter that opens tiles by default."""
from __future__ import annotations

import os
import random
import threading

import pytest
import torch

import aspen_torch
from aspen_torch import _C
from aspen_torch.apu.tile_graph import PointwiseOp, TileKind

POINTWISE, COPY, LINEAR = int(TileKind.POINTWISE), int(TileKind.COPY), int(TileKind.LINEAR)
ADD = int(PointwiseOp.ADD)
ROWS = 64


def sum_dag_program(rng: random.Random, num_tiles: int):
    """Tile k writes buffers[k] = (the sum of its parents' buffers, or ones) + seed_k, cut
    into random row parts; returns the program, the buffers and their expected values
    (small integers, so float sums are exact)."""
    buffers = [torch.zeros(ROWS, 8) for _ in range(num_tiles)]
    seeds = [torch.full((ROWS, 8), float(k + 1)) for k in range(num_tiles)]
    tiles, edges, expected = [], [], []
    for k in range(num_tiles):
        parents = rng.sample(range(k), min(k, rng.choice([0, 1, 2])))
        first = buffers[parents[0]] if parents else torch.ones(ROWS, 8)
        value = (expected[parents[0]] if parents else torch.ones(ROWS, 8)) + seeds[k]
        tensors, steps = [buffers[k], first, seeds[k]], [(ADD, 2, 1.0, 0.0)]
        for p in parents[1:]:
            tensors.append(buffers[p])
            steps.append((ADD, len(tensors) - 1, 1.0, 0.0))
            value = value + expected[p]
        parts = rng.choice([1, 2, 5, 8, ROWS])
        tiles.append((POINTWISE, tensors, [], steps, f"t{k}", None, (parts, [0] * len(tensors))))
        edges += [(p, k) for p in parents]
        expected.append(value)
    return _C.make_program(tiles, edges), buffers, expected


@pytest.mark.parametrize("sharing", ["always", "always_with_backups"])
@pytest.mark.parametrize("num_dses", [1, 2, 4])
def test_random_dags_of_parted_tiles_match_whole_runs(num_dses, sharing):
    # With backups every part is computed into scratch and committed, or taken over and
    # run again by an idle DSE: each part's values must come out once, exactly.
    rng = random.Random(num_dses)
    runtime = _C.Runtime(num_dses)
    runtime.tile_sharing = sharing
    for _ in range(200):
        program, buffers, expected = sum_dag_program(rng, rng.randint(1, 20))
        runtime.run(program)
        for got, want in zip(buffers, expected):
            assert torch.equal(got, want)
    if sharing == "always_with_backups" and num_dses > 1:
        assert sum(taken_over for *_, taken_over in runtime.dse_counts()) > 0


@pytest.mark.parametrize("sharing", ["always", "always_with_backups"])
def test_parts_run_while_dses_come_and_go_and_requests_overlap(sharing):
    runtime = _C.Runtime(1)
    runtime.tile_sharing = sharing
    stop, errors = threading.Event(), []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                program, buffers, expected = sum_dag_program(rng, rng.randint(1, 30))
                runtime.run(program)
                assert all(torch.equal(g, w) for g, w in zip(buffers, expected))
        except Exception as e:  # surfaced below; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for size in [2, 1, 4, 1, 3, 2] * 4:
        runtime.set_num_dses(size)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors


def test_idle_dses_take_parts_of_an_open_tile():
    # One long tile (64 parts, each a 1 MiB copy): the DSE that holds it opens it, and the
    # idle DSE (polling, or asleep and woken by the opening) takes parts from the back. Long
    # and repeated enough that the OS runs the second DSE during some call even when other
    # processes load both cores (8 parts in 20 calls missed once so).
    runtime = _C.Runtime(2)
    runtime.tile_sharing = "always"
    src = torch.randn(64, 1 << 18)
    out = torch.empty_like(src)
    program = _C.make_program([(COPY, [out, src], [], [], "copy", None, (64, [0, 0]))], [])
    for calls in range(1, 51):
        runtime.start_trace()
        runtime.run(program)
        events = runtime.stop_trace()
        assert torch.equal(out, src)
        assert sorted(part for _, _, part, *_ in events) == list(range(64))
        if len({dse for *_, dse, _, _ in events}) == 2:
            break
    else:
        pytest.fail("no second DSE ever took a part of the open tile")
    counts = runtime.dse_counts()
    assert sum(run for run, *_ in counts) == calls and sum(opened for _, opened, *_ in counts) == calls
    assert sum(taken for _, _, taken, _ in counts) > 0


@pytest.mark.parametrize("sharing", ["always", "always_with_backups"])
def test_a_failing_part_fails_that_request_only(sharing):
    runtime = _C.Runtime(2)
    runtime.tile_sharing = sharing
    out, x, bad_weight = torch.zeros(32, 4), torch.randn(32, 5), torch.randn(6, 4)
    program = _C.make_program([(LINEAR, [out, x, bad_weight, None], [], [], "aten.bad_mm", None,
                                (4, [0, 0, -1, -1]))], [])
    with pytest.raises(RuntimeError, match=r"tile 0 \(aten.bad_mm\) failed"):
        runtime.run(program)
    rng = random.Random(0)
    program, buffers, expected = sum_dag_program(rng, 20)
    runtime.run(program)
    assert all(torch.equal(g, w) for g, w in zip(buffers, expected))


def test_bad_parts_are_rejected():
    out, x, w = torch.zeros(8, 4), torch.randn(8, 5), torch.randn(5, 4)

    def linear(parts, dims, kind=LINEAR):
        return _C.make_program([(kind, [out, x, w, None], [], [], "mm", None, (parts, dims))], [])

    linear(8, [0, 0, -1, -1])
    with pytest.raises(RuntimeError, match="9 parts of 8 rows"):
        linear(9, [0, 0, -1, -1])
    with pytest.raises(RuntimeError, match="0 parts"):
        linear(0, [0, 0, -1, -1])
    with pytest.raises(RuntimeError, match="4 tensors but 3 split dims"):
        linear(2, [0, 0, -1])
    with pytest.raises(RuntimeError, match="tensor 2 has no dim 0 of the output's 8 rows"):
        linear(2, [0, 0, 0, -1])
    with pytest.raises(RuntimeError, match="split dim -1 is not one of its dims"):
        linear(2, [-1, 0, -1, -1])
    with pytest.raises(RuntimeError, match="cannot be cut into parts"):
        linear(2, [0, 0, -1, -1], kind=int(TileKind.MEAN))
    with pytest.raises(RuntimeError, match="'when_preempted', 'always', 'never' or 'always_with_backups'"):
        _C.Runtime(1).tile_sharing = "sometimes"
    with pytest.raises(ValueError, match="'when_preempted', 'always', 'never' or 'always_with_backups'"):
        aspen_torch.set_tile_sharing("sometimes")


def test_dses_sharing_one_cpu_open_their_tiles():
    # Two DSEs pinned to one CPU preempt each other, which the default mode detects (wall
    # time against thread CPU time) and answers by opening tiles with parts.
    runtime = _C.Runtime(2)
    assert runtime.tile_sharing == "when_preempted"
    runtime.set_dse_cpus([min(os.sched_getaffinity(0))])
    x, w = torch.randn(256, 512), torch.randn(512, 512)
    outs = [torch.empty(256, 512) for _ in range(16)]
    program = _C.make_program([(LINEAR, [o, x, w, None], [], [], "mm", None, (8, [0, 0, -1, -1])) for o in outs],
                              [(i, i + 2) for i in range(14)])
    for _ in range(50):
        runtime.start_trace()
        runtime.run(program)
        events = runtime.stop_trace()
        assert all(torch.allclose(o, x @ w, rtol=1e-4, atol=1e-3) for o in outs)
        if any(part >= 0 for _, _, part, *_ in events):
            return
    pytest.fail("DSEs that share a CPU never opened a tile")


def test_a_dse_sharing_its_cpu_has_parts_taken_over():
    # Two DSEs on one CPU: the one that loses the CPU in the middle of a part (computed
    # speculatively, since the meter saw it preempted) is seen standing still by the other,
    # which runs the part again into the output; the late result is dropped.
    runtime = _C.Runtime(2)
    runtime.set_dse_cpus([min(os.sched_getaffinity(0))])
    x, w = torch.randn(256, 512), torch.randn(512, 512)
    expected = x @ w
    outs = [torch.empty(256, 512) for _ in range(16)]
    program = _C.make_program([(LINEAR, [o, x, w, None], [], [], "mm", None, (8, [0, 0, -1, -1])) for o in outs],
                              [(i, i + 2) for i in range(14)])
    for _ in range(100):
        for o in outs:
            o.fill_(float("nan"))
        runtime.run(program)
        assert all(torch.allclose(o, expected, rtol=1e-4, atol=1e-3) for o in outs)
        if sum(taken_over for *_, taken_over in runtime.dse_counts()) > 0:
            return
    pytest.fail("no part of a descheduled DSE was ever taken over")
