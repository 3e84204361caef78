// Python bindings: thin wrappers. Every call that waits on DSEs releases the GIL.
#include "program.h"
#include "runtime.h"

#include <torch/extension.h>

#include <optional>
#include <tuple>

namespace aspen {
namespace {

using PyTile = std::tuple<int32_t, std::vector<std::optional<at::Tensor>>, std::vector<int64_t>,
                          std::vector<std::tuple<int32_t, int32_t, double, double>>, std::string>;

TileSpec to_tile_spec(const PyTile& py) {
  const auto& [kind, tensors, ints, epilogue, label] = py;
  TORCH_CHECK(kind >= 0 && kind <= static_cast<int32_t>(TileKind::kThreadProbe), "aspen: unknown tile kind ", kind);
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
  return spec;
}

std::shared_ptr<Program> make_program(const std::vector<PyTile>& tiles,
                                             const std::vector<std::pair<int32_t, int32_t>>& edges) {
  std::vector<TileSpec> specs;
  specs.reserve(tiles.size());
  for (const auto& t : tiles) specs.push_back(to_tile_spec(t));
  return std::make_shared<Program>(std::move(specs), edges);
}

void run_program(Runtime& runtime, const std::shared_ptr<Program>& program) {
  pybind11::gil_scoped_release no_gil;
  runtime.submit(program)->wait();
}

std::vector<std::tuple<uintptr_t, int32_t, std::string, int32_t, int64_t, int64_t>> stop_trace(Runtime& runtime) {
  std::vector<TraceEvent> events = runtime.stop_trace();
  std::vector<std::tuple<uintptr_t, int32_t, std::string, int32_t, int64_t, int64_t>> out;
  out.reserve(events.size());
  for (const auto& e : events)
    out.emplace_back(reinterpret_cast<uintptr_t>(e.program.get()), e.tile, e.program->tile(e.tile).label, e.dse,
                     e.start_ns, e.end_ns);
  return out;
}

}  // namespace
}  // namespace aspen

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace aspen;
  m.doc() = "aspen_torch runtime: tile programs executed by DSE threads over a work-stealing ready pool";
  pybind11::class_<Program, std::shared_ptr<Program>>(m, "Program")
      .def_property_readonly("num_tiles", &Program::num_tiles)
      .def_property_readonly("num_edges", &Program::num_edges)
      .def_property_readonly("id", [](const Program& p) { return reinterpret_cast<uintptr_t>(&p); });
  m.def("make_program", &make_program, pybind11::arg("tiles"), pybind11::arg("edges"),
        "Builds an immutable tile program; raises on bad tiles or a cyclic graph.");
  pybind11::class_<Runtime>(m, "Runtime")
      .def(pybind11::init<int>(), pybind11::arg("num_dses"), pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("set_num_dses", &Runtime::set_num_dses, pybind11::call_guard<pybind11::gil_scoped_release>())
      .def_property_readonly("num_dses", &Runtime::num_dses)
      .def("tiles_per_dse", &Runtime::tiles_per_dse)
      .def("run", &run_program, "Runs one request of the program and waits for it; raises the first tile error.")
      .def("start_trace", &Runtime::start_trace)
      .def("stop_trace", &stop_trace,
           "Stops tracing; returns (program, tile, label, dse, start_ns, end_ns) per tile run meanwhile.");
  m.attr("MAX_DSES") = Runtime::kMaxDses;
}
