"""Execution: inputs the graph was not compiled for recompile or raise clearly; outputs alias
as eager's do; runtime stats."""
from __future__ import annotations

import faulthandler
import functools
import gc
import os
import signal
import threading
import time
import types
import weakref

import pytest
import torch
import torch.nn as nn
from helpers import assert_matches_eager, assert_same_layout, compile_strict

import aspen_torch
from aspen_torch import AspenInputError
from aspen_torch.apu.prepack import SHARED_PACKS
from aspen_torch.execute import CompiledPartition
from aspen_torch.models import resnet18
from aspen_torch.output_layout import OutputLayout


def small_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def test_new_batch_on_a_second_instance_keeps_weights_frozen():
    """Dynamo's second compile of the same code has symbolic shapes; aspen compiles per
    concrete shape at call time, after dynamo dropped its metadata: BN buffers must still
    be known as frozen (strict mode raises otherwise)."""
    with torch.no_grad():
        for batch in (1, 3):
            model = resnet18()
            x = torch.randn(batch, 3, 48, 40)
            torch.testing.assert_close(compile_strict(model)(x), model(x), rtol=1e-4, atol=1e-4)


def test_new_shapes_recompile_and_stay_correct():
    model = small_model()
    compiled = compile_strict(model)
    with torch.no_grad():
        for shape in [(1, 3, 16, 16), (4, 3, 16, 16), (2, 3, 9, 13), (4, 3, 16, 16), (3, 3, 20, 8)]:
            x = torch.randn(shape)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_dynamic_true_specializes_shapes_and_module_floats():
    """Under torch.compile(dynamic=True) dynamo also passes module floats (batch norm's eps
    and momentum) as 0-d tensors read by .item(), which AOTAutograd cannot trace; aspen
    compiles per concrete shapes and values, and a changed eps still gives eager's answer."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
        compiled = torch.compile(model, backend="aspen", options={"strict": True}, dynamic=True)
        for shape, eps in [((2, 3, 9, 9), 1e-5), ((3, 3, 12, 7), 1e-5), ((3, 3, 12, 7), 0.5)]:
            model[1].eps = eps
            x = torch.randn(shape)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_plans_per_sequence_length_share_packed_weights_and_stay_bounded(monkeypatch):
    """A transformer served at ever new sequence lengths (dynamic shapes): every length gets
    its plan, all plans use one packing per linear, and only the most recently used plans
    are kept (a length seen again after eviction compiles again, correctly)."""
    monkeypatch.setattr(aspen_torch.backend._PerShapeCompiler, "MAX_PLANS", 2)
    model = nn.Sequential(nn.Linear(128, 512), nn.GELU(), nn.Linear(512, 128)).eval()
    report = aspen_torch.CompileReport(keep_tile_graphs=True)
    compiled = torch.compile(model, dynamic=True, backend=lambda gm, ex: aspen_torch.aspen_backend(
        gm, ex, {"strict": True}, report=report))
    with torch.no_grad():
        for length in (16, 24, 40, 16):
            x = torch.randn(1, length, 128)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    assert report.num_graphs == 4, "16 was evicted by 24 and 40 and compiled again"
    packed = [{id(t.inputs[1].ref.buffer.constant) for t in graph.tiles if t.inputs[1] is not None
               and t.inputs[1].ref.buffer.constant is not None} for graph in report.tile_graphs]
    assert len(packed[0]) >= 2 and all(p == packed[0] for p in packed), "one packing per linear for all lengths"


def _symbolic_mlp_compiled_with(options: dict, report: aspen_torch.CompileReport):
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)).eval()
    compiled = torch.compile(model, dynamic=True, backend=lambda gm, ex: aspen_torch.aspen_backend(
        gm, ex, options, report=report))
    return model, compiled


def _count_seconds(monkeypatch) -> None:
    """A clock that advances one second per reading: every compile and every eager call the
    recompile policy times takes one second."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(aspen_torch.recompile.RecompilePolicy, "clock", staticmethod(lambda: float(next(ticks))))


def test_a_new_shape_runs_in_eager_until_its_eager_time_pays_a_compile(monkeypatch):
    """A decoder's KV cache grows a token per step: a plan per length would compile on every
    token. After the first shape of a symbolic graph, a new shape runs in eager until the
    eager time spent at it reaches the last compile's time: with compiles and eager calls
    of one second each, a new shape runs in eager once and compiles on its second call."""
    _count_seconds(monkeypatch)
    report = aspen_torch.CompileReport()
    model, compiled = _symbolic_mlp_compiled_with({}, report)
    with torch.no_grad():
        for length, graphs, cold_calls in [(16, 1, 0), (24, 1, 1), (24, 2, 1), (24, 2, 1), (40, 2, 2), (16, 2, 2)]:
            x = torch.randn(1, length, 32)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
            assert (report.num_graphs, report.cold_calls) == (graphs, cold_calls), f"after length {length}"
    assert "2 call(s) at input shapes or weight sets not compiled yet ran in eager" in str(report)


def test_strict_mode_and_recompiles_always_compile_every_shape_at_once():
    for options in ({"strict": True}, {"recompiles": "always"}):
        report = aspen_torch.CompileReport()
        torch._dynamo.reset()
        model, compiled = _symbolic_mlp_compiled_with(options, report)
        with torch.no_grad():
            for length in (16, 24, 40):
                x = torch.randn(1, length, 32)
                torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        assert (report.num_graphs, report.cold_calls) == (3, 0), options


def test_calls_with_a_plan_do_not_wait_for_a_compile(monkeypatch):
    """A server's known shapes keep their latency while a new one compiles (a compile held
    the lock that every call takes for seconds); under recompiles="always" a second call at
    the shape being compiled waits for that compile instead of compiling it again."""
    report = aspen_torch.CompileReport()
    model, compiled = _symbolic_mlp_compiled_with({"recompiles": "always"}, report)
    known, new = torch.randn(1, 16, 32), torch.randn(1, 24, 32)
    compiling, finish_compile = threading.Event(), threading.Event()
    capture_and_compile = aspen_torch.backend.capture_and_compile

    def slow_compile(*args, **kwargs):
        compiling.set()
        finish_compile.wait(60)
        return capture_and_compile(*args, **kwargs)

    def call(x, results):
        with torch.no_grad():
            results.append(compiled(x))

    with torch.no_grad():
        compiled(known)
    monkeypatch.setattr(aspen_torch.backend, "capture_and_compile", slow_compile)
    new_results, known_results = [], []
    new_callers = [threading.Thread(target=call, args=(new, new_results)) for _ in range(2)]
    new_callers[0].start()
    assert compiling.wait(60)
    new_callers[1].start()
    known_caller = threading.Thread(target=call, args=(known, known_results))
    known_caller.start()
    known_caller.join(30)
    finished_first = not known_caller.is_alive()
    finish_compile.set()
    for t in [known_caller, *new_callers]:
        t.join(60)
    assert finished_first, "a call at a compiled shape waited for another shape's compile"
    with torch.no_grad():
        torch.testing.assert_close(known_results[0], model(known), rtol=1e-4, atol=1e-4)
        for result in new_results:
            torch.testing.assert_close(result, model(new), rtol=1e-4, atol=1e-4)
    assert (len(new_results), report.num_graphs, report.cold_calls) == (2, 2, 0)


def test_more_instances_than_weight_sets_kept_do_not_compile_every_call(monkeypatch):
    """Instances of one model class share dynamo's graph; aspen keeps a plan per weight set.
    With room for two, a third instance runs in eager until hot (one call here, see
    _count_seconds), then compiles and evicts the least recently used set, which runs in
    eager again when it comes back. Without this, three instances called in turn compiled
    on every call."""
    _count_seconds(monkeypatch)
    monkeypatch.setattr(aspen_torch.capture.FrozenInputsGuard, "MAX_WEIGHT_SETS", 2)
    models = [nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)).eval() for _ in range(3)]
    report = aspen_torch.CompileReport()
    backend = functools.partial(aspen_torch.aspen_backend, report=report)  # one backend: dynamo shares the graph
    compiled = [torch.compile(m, backend=backend) for m in models]
    x = torch.randn(4, 32)
    calls = [(0, 1, 0), (1, 2, 0), (0, 2, 0), (2, 2, 1), (2, 3, 1), (1, 3, 2), (0, 3, 2), (1, 4, 2), (2, 4, 3)]
    with torch.no_grad():
        for i, graphs, cold_calls in calls:
            torch.testing.assert_close(compiled[i](x), models[i](x), rtol=1e-4, atol=1e-4)
            assert (report.num_graphs, report.cold_calls) == (graphs, cold_calls), f"calling instance {i}"


def test_compiled_partition_rejects_mismatched_inputs():
    captured = []

    def backend(gm, example_inputs):
        compiled = aspen_torch.aspen_backend(gm, example_inputs, {"strict": True})
        captured.append(compiled)
        return compiled

    model = small_model()
    with torch.no_grad():
        torch.compile(model, backend=backend)(torch.randn(2, 3, 8, 8))
    # Reach the CompiledPartition that the aten graph calls.
    partitions = [m for m in _modules_of(captured[0]) if isinstance(m, CompiledPartition)]
    assert len(partitions) == 1
    part = partitions[0]
    good = torch.randn(2, 3, 8, 8)
    part(good)
    with pytest.raises(AspenInputError, match="shape"):
        part(torch.randn(2, 3, 8, 9))
    with pytest.raises(AspenInputError, match="dtype"):
        part(good.double())
    with pytest.raises(AspenInputError, match="expected 1 inputs"):
        part(good, good)
    with pytest.raises(AspenInputError, match="tensor"):
        part(3.0)
    part(good)  # still usable


def _modules_of(compiled_fn):
    """The fx modules reachable from AOTAutograd's wrapper closures."""
    seen, stack, found = set(), [compiled_fn], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
            stack.extend(obj.children())
        if isinstance(obj, (tuple, list)):
            stack.extend(obj)
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                stack.append(cell.cell_contents)
            except ValueError:
                pass
        for attr in ("__wrapped__", "__self__", "compiled_fn", "_sets", "_plans", "compiled"):
            if hasattr(obj, attr):
                value = getattr(obj, attr)
                stack.extend(value.values() if isinstance(value, dict) else [value])
    return found


def test_runtime_stats_and_set_num_dses():
    model = small_model()
    with torch.no_grad():
        compile_strict(model, num_dses=2)(torch.randn(4, 3, 32, 32))
    stats = aspen_torch.runtime_stats()
    assert stats["num_dses"] == 2
    per_dse = ("tiles_per_dse", "tiles_opened_per_dse", "parts_taken_per_dse", "parts_taken_over_per_dse")
    assert [len(stats[key]) for key in per_dse] == [2] * len(per_dse)
    aspen_torch.set_num_dses(3)
    assert aspen_torch.runtime_stats()["num_dses"] == 3
    with pytest.raises(ValueError):
        aspen_torch.set_num_dses(0)


def test_other_weights_are_not_answered_with_frozen_ones():
    """Dynamo reuses a compiled graph for another instance of the same module class (it
    guards parameters by shape); aspen froze the first instance's weights, so it must
    notice other weight tensors, and weights changed in place, and recompile for them."""
    first, second = resnet18(), resnet18()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        for model in (first, second, first):
            torch.testing.assert_close(compile_strict(model)(x), model(x), rtol=1e-4, atol=1e-4)
        compiled = compile_strict(first)
        compiled(x)
        first.load_state_dict(second.state_dict())  # in place: same tensors, new values
        torch.testing.assert_close(compiled(x), second(x), rtol=1e-4, atol=1e-4)
        first.fc.weight.data = torch.randn_like(first.fc.weight)  # same tensor and version, new storage
        torch.testing.assert_close(compiled(x), first(x), rtol=1e-4, atol=1e-4)


def test_model_built_under_inference_mode():
    """Parameters created (or loaded) under torch.inference_mode are inference tensors,
    which keep no version counter for the frozen-weights check to read."""
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
        x = torch.randn(3, 8)
        compiled = compile_strict(model)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        other = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
        torch.testing.assert_close(compile_strict(other)(x), other(x), rtol=1e-4, atol=1e-4)


def _packed_mlp() -> nn.Module:
    """Linears big enough at 64 rows for packed oneDNN weights (rules/matmul.py)."""
    return nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 128)).eval()


def test_a_deleted_model_frees_its_weights_and_packings():
    """Models created anew (a notebook cell run again, a sweep) share dynamo's graph. The
    weight sets it kept held the dead models' parameters and a packed copy of each, and the
    compile report every compile's tile graph: 45-90 MB per ResNet-18 created."""
    torch._dynamo.reset()
    gc.collect()  # earlier tests' compiled graphs, and their packings, go now and not mid-test
    x = torch.randn(64, 128)
    packings_before = len(SHARED_PACKS)
    with torch.no_grad():
        for _ in range(3):
            model = _packed_mlp()
            compiled = compile_strict(model)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
            assert len(SHARED_PACKS) == packings_before + 2
            weight = weakref.ref(model[0].weight)
            del model, compiled
            gc.collect()
            assert weight() is None, "the compiled graph keeps a deleted model's weights"
            assert len(SHARED_PACKS) == packings_before, "the compiled graph keeps a deleted model's packings"


def test_weights_written_in_place_keep_one_weight_set(monkeypatch):
    """Fine-tuning with a compiled evaluation after every step: each step writes the weights
    in place, so each evaluation compiles for new versions. A set of older versions can never
    be called again and is dropped: every evaluation compiles at once (none runs in eager
    for want of room) and one set of packings stays alive."""
    monkeypatch.setattr(aspen_torch.capture.FrozenInputsGuard, "MAX_WEIGHT_SETS", 2)
    torch._dynamo.reset()
    model = _packed_mlp()
    report = aspen_torch.CompileReport()
    compiled = torch.compile(model, backend=functools.partial(aspen_torch.aspen_backend, report=report))
    x = torch.randn(64, 128)
    gc.collect()
    packings_before = len(SHARED_PACKS)
    with torch.no_grad():
        for _ in range(5):
            for p in model.parameters():
                p.add_(0.01)  # an optimizer step
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
            gc.collect()  # a compiled fx graph is a reference cycle: the dropped plan goes at a collection
            assert len(SHARED_PACKS) == packings_before + 2
    assert (report.num_graphs, report.cold_calls) == (5, 0)


def test_weights_swapped_back_by_data_use_their_kept_set():
    """`param.data = t` keeps the tensor and its version and swaps the storage: switching
    between two weight tensors and back finds the plan kept for each."""
    model = _packed_mlp()
    report = aspen_torch.CompileReport()
    compiled = torch.compile(model, backend=functools.partial(aspen_torch.aspen_backend, report=report))
    x = torch.randn(64, 128)
    first, second = model[0].weight.data, torch.randn_like(model[0].weight)
    with torch.no_grad():
        for weight in (first, second, first, second):
            model[0].weight.data = weight
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    assert (report.num_graphs, report.cold_calls) == (2, 0)


def test_a_forked_child_runs_on_a_runtime_of_its_own():
    """fork() copies only the calling thread: the parent's DSEs are not in the child, so a
    call there must start the child's own runtime (it hung waiting on the parent's), and
    the parent's copy must refuse work instead of waiting. The child does not run eager
    ATen ops: libgomp's team, which the parent's eager ops started, hangs after a fork."""
    model = small_model()
    x = torch.randn(2, 3, 16, 16)
    compiled = compile_strict(model)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(compiled(x), expected)
    parents_runtime = aspen_torch.runtime.SHARED_RUNTIME.get()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        status = 1
        try:
            faulthandler.dump_traceback_later(30, exit=True)
            with torch.no_grad():
                outputs = [compiled(x), aspen_torch.submit(compiled, x).result(timeout=60)]
            try:
                parents_runtime.num_dses
                refused = b"0"
            except RuntimeError as error:
                refused = b"1" if "fork()" in str(error) else b"0"
            os.write(write_end, refused + b"".join(y.numpy().tobytes() for y in outputs))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    deadline = time.monotonic() + 120
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish")
        time.sleep(0.05)
    with os.fdopen(read_end, "rb") as report:
        refused, outputs = report.read(1), torch.frombuffer(bytearray(report.read()), dtype=torch.float32)
    assert refused == b"1", "the parent's runtime refuses work in the child"
    torch.testing.assert_close(outputs, torch.cat([expected.flatten()] * 2))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), expected)


def test_buffers_the_forward_updates_are_runtime_inputs():
    """A buffer the forward writes (a step counter; batch norm's statistics in training mode)
    changes every call: it is read at run time, not frozen, so calls neither recompile nor
    see a stale value."""
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.register_buffer("steps", torch.zeros(1))

        def forward(self, x):
            self.steps.add_(1)
            return self.fc(x) * self.steps

    model, reference = Counter().eval(), Counter().eval()
    reference.load_state_dict(model.state_dict())
    report = aspen_torch.CompileReport()
    compiled = torch.compile(model, backend=lambda gm, ex: aspen_torch.aspen_backend(
        gm, ex, {"strict": True}, report=report))
    x = torch.randn(4, 8)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-4)
    assert model.steps.item() == 3 and report.num_graphs == 1 and not report.fallback_ops

    bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    bn_reference = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    bn_reference.load_state_dict(bn.state_dict())
    report = aspen_torch.CompileReport()
    compiled = torch.compile(bn, backend=lambda gm, ex: aspen_torch.aspen_backend(gm, ex, {}, report=report))
    with torch.no_grad():
        for _ in range(3):
            y = torch.randn(2, 3, 6, 6)
            torch.testing.assert_close(compiled(y), bn_reference(y), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn[1].running_var, bn_reference[1].running_var)
    assert report.num_graphs == 1, "training-mode batch norm (in eager) does not recompile every call"


def test_output_broadcast_from_a_buffer():
    """RoBERTa returns a registered buffer expanded over the batch (token type ids): eager's
    output has stride 0 there, and its copy out of the plan must not write overlapping memory."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("token_types", torch.arange(7).view(1, 7))

        def forward(self, x):
            return x * 2, self.token_types.expand(x.shape[0], 7), (x.sum(0) + 1).expand(3, 7)

    assert_matches_eager(Model(), torch.randn(4, 7))


class _ViewsOfOneIntermediate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv(x))  # channels-last in aspen: flatten(1) is a copy there
        z = y.mean((2, 3)) + 1
        return y, y.flatten(1), y[:, 2:5], z, z.t(), z[1], y.permute(0, 2, 3, 1)


def test_outputs_viewing_one_intermediate_share_its_storage():
    """Eager returns views of one tensor sharing its storage: a write through one shows in
    the others. aspen's outputs do the same (the helper checks storages, offsets, strides),
    also where its own layout turned a view into a copy."""
    model, x = _ViewsOfOneIntermediate().eval(), torch.randn(2, 3, 6, 5)
    assert_matches_eager(model, x)
    with torch.no_grad():
        outputs = compile_strict(model)(x)
        outputs[0][1, 3].fill_(7.0)
        outputs[4][0, 1] = -1.0
    assert torch.equal(outputs[1][1, 3 * 30:4 * 30], torch.full((30,), 7.0))
    assert torch.equal(outputs[2][1, 1], torch.full((6, 5), 7.0))
    assert outputs[3][1, 0] == -1.0 and outputs[5][0] == -1.0


def test_outputs_in_a_dict_beside_none_and_numbers():
    """Model outputs are any pytree (transformers return dicts with None in them): its
    tensors come from the plan, the rest passes through as eager gives it."""
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(5, 6)

        def forward(self, x):
            y = self.linear(x)
            return {"hidden": y, "pooled": (y.sum(-1), None), "width": y.shape[-1], "scale": 0.5}

    assert_matches_eager(Heads().eval(), torch.randn(3, 5))


def test_output_that_is_a_view_of_a_partition_input_is_that_view():
    """An op without a rule (a dtype view) splits the graph; the second partition's output
    is a view of its input, and returns it, not a copy, so it aliases the first's output."""
    def model(x):
        y = torch.relu(x) + 1
        return y, y.view(torch.int32), y[:, 1:3]

    x = torch.randn(4, 8)
    torch._dynamo.reset()
    with torch.no_grad():
        actual, expected = torch.compile(model, backend="aspen")(x), model(x)
    torch.testing.assert_close(actual, expected)
    assert_same_layout(actual, expected, [x])


def test_output_layout_views_an_input_only_with_its_traced_strides():
    traced_input = torch.randn(4, 8)
    graph = types.SimpleNamespace(input_meta=[traced_input], output_meta=[traced_input[:, 1:3], traced_input * 2])
    layout = OutputLayout(graph)
    plan_views = [torch.randn(4, 2), torch.randn(4, 8)]
    x = torch.randn(4, 8)
    outputs, copies = layout.make([x], plan_views)
    assert outputs[0].data_ptr() == x[:, 1:3].data_ptr() and outputs[0].stride() == (8, 1)
    assert [(src is plan_views[1], dst is outputs[1]) for src, dst in copies] == [(True, True)]
    transposed = torch.randn(8, 4).t()  # same shape, other strides: the output is copied instead
    outputs, copies = layout.make([transposed], plan_views)
    assert outputs[0].untyped_storage().data_ptr() != transposed.untyped_storage().data_ptr()
    assert [(src is view, dst is out) for (src, dst), view, out in zip(copies, plan_views, outputs)] == [(True, True)] * 2
    assert len(copies) == 2
