// Python bindings: thin wrappers. Every call that waits on DSEs releases the GIL.
#include "aten_call.h"
#include "kernels.h"
#include "planned_output.h"
#include "program.h"
#include "runtime.h"
#include "tile_parts.h"

#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include <c10/core/CPUAllocator.h>

#include <omp.h>

#include <cstring>
#include <iterator>
#include <optional>
#include <tuple>

namespace aspen {
namespace {

// The aten graph may pass a Python number where the schema says Tensor (add.Tensor(x, 0)).
// Eager wraps it as a "wrapped number" tensor, which type promotion treats as a scalar:
// int32 + 0 stays int32. A plain 0-dim int64 tensor would promote the same way, but a
// plain double one would not (int32 + 1.5 is float32 in eager), so wrap as eager does.
c10::IValue to_ivalue(const pybind11::handle& arg, const c10::Argument& schema_arg) {
  const bool number = pybind11::isinstance<pybind11::bool_>(arg) || pybind11::isinstance<pybind11::int_>(arg) ||
                      pybind11::isinstance<pybind11::float_>(arg);
  if (!number || schema_arg.real_type()->kind() != c10::TypeKind::TensorType) {
    return torch::jit::toIValue(arg, schema_arg.real_type());
  }
  at::Tensor wrapped = pybind11::isinstance<pybind11::bool_>(arg) ? at::scalar_tensor(arg.cast<bool>(), at::kBool)
                       : pybind11::isinstance<pybind11::int_>(arg) ? at::scalar_tensor(arg.cast<int64_t>(), at::kLong)
                                                                    : at::scalar_tensor(arg.cast<double>(), at::kDouble);
  wrapped.unsafeGetTensorImpl()->set_wrapped_number(true);
  return wrapped;
}

// (kind, tensors, ints, epilogue, label[, aten call or None[, (parts, split dims)]]), where an
// aten call is (op name, overload name, args in schema order, result index).
TileSpec to_tile_spec(const pybind11::tuple& py) {
  TORCH_CHECK(py.size() >= 5 && py.size() <= 7, "aspen: a tile is a tuple of 5 to 7 items, got ", py.size());
  const auto kind = py[0].cast<int32_t>();
  const auto tensors = py[1].cast<std::vector<std::optional<at::Tensor>>>();
  const auto ints = py[2].cast<std::vector<int64_t>>();
  const auto epilogue = py[3].cast<std::vector<std::tuple<int32_t, int32_t, double, double>>>();
  const auto label = py[4].cast<std::string>();
  TORCH_CHECK(kind >= 0 && kind <= static_cast<int32_t>(TileKind::kMklLinear), "aspen: unknown tile kind ", kind);
  TileSpec spec{static_cast<TileKind>(kind), {}, ints, {}, label};
  TORCH_CHECK(!tensors.empty() && tensors[0].has_value(), "aspen: tile '", label, "' has no output tensor");
  for (const auto& t : tensors) spec.tensors.push_back(t.value_or(at::Tensor()));
  for (const auto& [op, operand, a, b] : epilogue) {
    TORCH_CHECK(op >= 0 && op <= static_cast<int32_t>(PointwiseOp::kGelu), "aspen: unknown pointwise op ", op);
    TORCH_CHECK(operand >= -1 && operand < static_cast<int32_t>(spec.tensors.size()) &&
                    (operand < 0 || spec.tensors[operand].defined()),
                "aspen: tile '", label, "' epilogue operand ", operand, " is not one of its tensors");
    spec.epilogue.push_back(PointwiseStep{static_cast<PointwiseOp>(op), operand, a, b});
  }
  TORCH_CHECK(spec.kind != TileKind::kPointwise || !spec.epilogue.empty(),
              "aspen: pointwise tile '", label, "' has no op");
  const bool has_call = py.size() >= 6 && !py[5].is_none();
  TORCH_CHECK((spec.kind == TileKind::kAtenOp) == has_call,
              "aspen: tile '", label, "': an ATen call goes with, and only with, an aten-op tile");
  if (py.size() == 7) {
    const auto parts = py[6].cast<std::tuple<int32_t, std::vector<int32_t>>>();
    spec.parts = std::get<0>(parts);
    spec.split_dims = std::get<1>(parts);
    check_tile_parts(spec);
  }
  if (has_call) {
    const auto call = py[5].cast<pybind11::tuple>();
    const auto name = call[0].cast<std::string>();
    const auto overload = call[1].cast<std::string>();
    const auto args = call[2].cast<pybind11::list>();
    const auto result_index = call[3].cast<int64_t>();
    c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    const auto& schema_args = op.schema().arguments();
    TORCH_CHECK(args.size() == schema_args.size(), "aspen: tile '", label, "': ", name, " takes ",
                schema_args.size(), " arguments, got ", args.size());
    TORCH_CHECK(result_index >= 0 && result_index < static_cast<int64_t>(op.schema().returns().size()),
                "aspen: tile '", label, "': result index ", result_index, " out of range");
    torch::jit::Stack stack;
    for (size_t i = 0; i < args.size(); ++i) stack.push_back(to_ivalue(args[i], schema_args[i]));
    spec.aten_call = std::make_shared<const AtenCall>(AtenCall{op, std::move(stack), result_index});
  }
  return spec;
}

std::shared_ptr<Program> make_program(const std::vector<pybind11::tuple>& tiles,
                                             const std::vector<std::pair<int32_t, int32_t>>& edges) {
  std::vector<TileSpec> specs;
  specs.reserve(tiles.size());
  for (const auto& t : tiles) specs.push_back(to_tile_spec(t));
  return std::make_shared<Program>(std::move(specs), edges);
}

using CopyPairs = std::vector<std::pair<at::Tensor, at::Tensor>>;  // (source, destination)

// The caller's copies in and out of the program's buffers run on the caller's thread alone.
// A parallel ATen copy would wake the caller's OpenMP team, whose idle workers then spin
// (libgomp's default wait policy) for milliseconds on the cores the DSEs run on: traced on
// ResNet-50 B1, one DSE stood still for the first ~2.5 ms of every call. ATen's
// set_num_threads is process-wide, so this sets OpenMP's per-thread team size instead; the
// at::get_num_threads() before it lets ATen finish its lazy per-thread setup, which would
// otherwise overwrite the 1.
class SerialOnThisThread {
 public:
  SerialOnThisThread() : previous_(at::get_num_threads()) { omp_set_num_threads(1); }
  ~SerialOnThisThread() { omp_set_num_threads(previous_); }
  SerialOnThisThread(const SerialOnThisThread&) = delete;
  SerialOnThisThread& operator=(const SerialOnThisThread&) = delete;

 private:
  const int previous_;
};

void copy_on_this_thread(const CopyPairs& pairs) {
  SerialOnThisThread serial;
  at::NoGradGuard no_grad;
  for (const auto& [source, destination] : pairs) destination.copy_(source);
}

void run_program(Runtime& runtime, const std::shared_ptr<Program>& program, bool urgent, const CopyPairs& copy_in,
                 const CopyPairs& copy_out) {
  pybind11::gil_scoped_release no_gil;
  copy_on_this_thread(copy_in);
  const std::shared_ptr<Request> request = runtime.submit(program, urgent);
  request->wait();
  if (request->lost_nan()) {
    // Its relus turned a NaN into 0 somewhere: again, with the inputs copied in anew (the
    // memory plan may have reused their buffers) and the program's relus exact from now on.
    copy_on_this_thread(copy_in);
    runtime.submit(program, urgent)->wait();
  }
  copy_on_this_thread(copy_out);
}

// The frozen-input check of every call (capture.py): the identity and version of the tensor
// at each of `positions` in a call's arguments, as one bytes key. Read from Python (two
// attribute lookups per tensor, over ResNet-50's 268 parameters, cache-cold after a call)
// it took ~0.1-0.2 ms of every call.
pybind11::bytes frozen_signature(const pybind11::list& args, const std::vector<int64_t>& positions) {
  std::string key(positions.size() * 3 * sizeof(int64_t), '\0');
  auto* out = reinterpret_cast<int64_t*>(key.data());
  const auto size = static_cast<int64_t>(args.size());
  for (size_t i = 0; i < positions.size(); ++i) {
    TORCH_CHECK(positions[i] >= 0 && positions[i] < size, "aspen: frozen input position ", positions[i],
                " outside the ", size, " arguments");
    PyObject* arg = PyList_GET_ITEM(args.ptr(), positions[i]);
    TORCH_CHECK(THPVariable_Check(arg), "aspen: frozen input ", positions[i], " is not a tensor");
    const at::Tensor& tensor = THPVariable_Unpack(arg);
    out[3 * i] = static_cast<int64_t>(reinterpret_cast<intptr_t>(tensor.unsafeGetTensorImpl()));
    // Inference tensors (a model built or loaded under torch.inference_mode) keep no version
    // counter: in-place writes to them, possible only in inference mode, are not seen.
    out[3 * i + 1] = tensor.is_inference() ? -1 : static_cast<int64_t>(tensor._version());
    // `param.data = other` swaps the storage under the same tensor and version.
    out[3 * i + 2] = static_cast<int64_t>(reinterpret_cast<intptr_t>(
        tensor.has_storage() ? tensor.storage().unsafeGetStorageImpl() : nullptr));
  }
  return pybind11::bytes(key);
}

using TraceTuple = std::tuple<uintptr_t, int32_t, int32_t, std::string, int32_t, int64_t, int64_t>;

std::vector<TraceTuple> stop_trace(Runtime& runtime) {
  std::vector<TraceEvent> events = runtime.stop_trace();
  std::vector<TraceTuple> out;
  out.reserve(events.size());
  for (const auto& e : events)
    out.emplace_back(reinterpret_cast<uintptr_t>(e.program.get()), e.tile, e.part, e.program->tile(e.tile).label,
                     e.dse, e.start_ns, e.end_ns);
  return out;
}

// A Runtime that fork() copied into a child has no DSE threads there, and joining them would
// never return: the child leaves its copy be (aspen_torch's shared runtime starts another).
struct RuntimeDeleter {
  void operator()(Runtime* runtime) const {
    if (runtime->owned_by_this_process()) delete runtime;
  }
};

const char* const kSharingNames[] = {"when_preempted", "always", "never", "always_with_backups"};

void set_tile_sharing(Runtime& runtime, const std::string& name) {
  for (int i = 0; i < static_cast<int>(std::size(kSharingNames)); ++i) {
    if (name == kSharingNames[i]) return runtime.set_tile_sharing(static_cast<TileSharing>(i));
  }
  TORCH_CHECK(false, "aspen: tile sharing is 'when_preempted', 'always', 'never' or 'always_with_backups', got '",
              name, "'");
}

// A kernel's output as PlannedOutput sees it: inside the scope of `view`, a scratchpad of
// `scratch_bytes` (if any) allocated and freed through the allocator's raw interface, as
// oneDNN's are, then an allocation of `sizes` / `strides`, filled with `value` and landed.
// Returns whether the output took the view's bytes.
bool write_through_planned_output(const at::Tensor& view, const std::vector<at::Tensor>& inputs,
                                  const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides,
                                  const at::Tensor& value, int64_t scratch_bytes) {
  TORCH_CHECK(view.device().is_cpu(), "aspen: planned outputs are CPU tensors");
  install_planned_output_allocator();
  const PlannedOutput planned(view, inputs);
  if (scratch_bytes > 0) {
    c10::Allocator* allocator = c10::GetCPUAllocator();
    void* scratch = allocator->raw_allocate(scratch_bytes);
    std::memset(scratch, 0xff, scratch_bytes);
    allocator->raw_deallocate(scratch);
  }
  at::Tensor result = at::empty_strided(sizes, strides, view.options());
  result.copy_(value);
  planned.land(result);
  return result.data_ptr() == view.data_ptr();
}

}  // namespace
}  // namespace aspen

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace aspen;
  m.doc() = "aspen_torch runtime: tile programs executed by DSE threads over a work-stealing ready pool";
  pybind11::class_<Program, std::shared_ptr<Program>>(m, "Program")
      .def_property_readonly("num_tiles", &Program::num_tiles)
      .def_property_readonly("num_edges", &Program::num_edges)
      .def_property_readonly("id", [](const Program& p) { return reinterpret_cast<uintptr_t>(&p); })
      .def_property_readonly(
          "relus_fused", [](const Program& p) { return p.relu_fusion() == ReluFusion::kFused; },
          "Whether its conv tiles fuse their relu (false once a request may have lost a NaN to it).");
  m.def("make_program", &make_program, pybind11::arg("tiles"), pybind11::arg("edges"),
        "Builds an immutable tile program; raises on bad tiles or a cyclic graph.");
  pybind11::class_<Runtime, std::unique_ptr<Runtime, RuntimeDeleter>>(m, "Runtime")
      .def(pybind11::init<int>(), pybind11::arg("num_dses"), pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("set_num_dses", &Runtime::set_num_dses, pybind11::call_guard<pybind11::gil_scoped_release>())
      .def_property_readonly("num_dses", &Runtime::num_dses)
      .def("set_dse_cpus", &Runtime::set_dse_cpus, pybind11::arg("cpus"),
           pybind11::call_guard<pybind11::gil_scoped_release>(), "Pins DSE i to cpus[i % len(cpus)]; [] unpins.")
      .def_property_readonly("dse_cpus", &Runtime::dse_cpus)
      .def(
          "dse_counts",
          [](const Runtime& r) {
            std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> out;
            for (const auto& c : r.dse_counts())
              out.emplace_back(c.tiles_run, c.tiles_opened, c.parts_taken, c.parts_taken_over);
            return out;
          },
          "Per DSE since the runtime started: (tiles finished, tiles opened to helpers, parts taken from "
          "other DSEs' open tiles, parts taken over from DSEs descheduled while running them).")
      .def("run", &run_program, pybind11::arg("program"), pybind11::arg("urgent") = false,
           pybind11::arg("copy_in") = CopyPairs(), pybind11::arg("copy_out") = CopyPairs(),
           "Copies each (source, destination) of copy_in, runs one request of the program, waits for it "
           "and copies copy_out; raises the first tile error. The copies run on the calling thread alone.")
      .def_property(
          "tile_sharing", [](const Runtime& r) { return kSharingNames[static_cast<int>(r.tile_sharing())]; },
          &set_tile_sharing,
          "When a DSE runs a tile with row parts part by part, so idle DSEs can take parts: "
          "'when_preempted' (default), 'always', 'never' or 'always_with_backups' (for tests).")
      .def("start_trace", &Runtime::start_trace)
      .def("stop_trace", &stop_trace,
           "Stops tracing; returns (program, tile, part, label, dse, start_ns, end_ns) per tile or part "
           "run meanwhile (part -1: the whole tile).");
  m.def("frozen_signature", &frozen_signature, pybind11::arg("args"), pybind11::arg("positions"),
        "Identity, version and storage of the tensors at `positions` of `args`, as a bytes key.");
  m.def("mkl_packed_gemm_available", &aspen::mkl_packed_gemm_available,
        "Whether this torch exports MKL's packed GEMM (cblas_sgemm_pack / _compute).");
  m.def("pack_mkl_linear_weight", &aspen::pack_mkl_linear_weight, pybind11::arg("weight"), pybind11::arg("rows"),
        "weight [out_features, in_features] packed by MKL for products of `rows` rows (a flat float32 tensor).");
  m.def("mkl_packed_linear", &aspen::mkl_packed_linear, pybind11::arg("x"), pybind11::arg("packed"),
        pybind11::arg("out_features"), pybind11::call_guard<pybind11::gil_scoped_release>(),
        "x [rows, in_features] times a weight packed by pack_mkl_linear_weight (for any rows).");
  m.def("write_through_planned_output", &write_through_planned_output, pybind11::arg("view"), pybind11::arg("inputs"),
        pybind11::arg("sizes"), pybind11::arg("strides"), pybind11::arg("value"), pybind11::arg("scratch_bytes") = 0,
        "For tests: allocates a kernel's output (after a scratchpad of scratch_bytes, if any) inside a "
        "planned-output scope of `view`, fills it with `value` and lands it in `view`; returns whether the "
        "output took the view's bytes.");
  m.attr("MAX_DSES") = Runtime::kMaxDses;
}
