// Linear tiles on weights prepacked into oneDNN's blocked layout at compile time.
#include "kernels.h"
#include "planned_output.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace aspen {
namespace {

const c10::OperatorHandle& onednn_linear() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  return op;
}

// oneDNN's post-op for a pointwise step, if it has one that keeps eager's results:
// (attr, algorithm). Relu and clamp stay ATen steps: oneDNN computes them
// with max/min, which turn NaN into the bound where eager keeps NaN.
bool onednn_post_op(const PointwiseStep& s, std::string* attr, std::string* algorithm) {
  switch (s.op) {
    case PointwiseOp::kSigmoid: *attr = "sigmoid"; return true;
    case PointwiseOp::kTanh: *attr = "tanh"; return true;
    case PointwiseOp::kSilu: *attr = "swish"; return true;
    case PointwiseOp::kHardswish: *attr = "hardswish"; return true;
    case PointwiseOp::kGelu:
      *attr = "gelu";
      *algorithm = s.a != 0 ? "tanh" : "none";
      return true;
    default: return false;
  }
}

}  // namespace

// oneDNN returns a fresh output; a dense output view is that allocation (PlannedOutput),
// a column block's view gets a copy.
void run_packed_linear(const TileSpec& t) {
  std::string attr = "none", algorithm;
  const bool fused = !t.epilogue.empty() && onednn_post_op(t.epilogue[0], &attr, &algorithm);
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(t.tensors[1]);
  stack.emplace_back(t.tensors[2]);
  stack.emplace_back(t.tensors[3].defined() ? c10::IValue(t.tensors[3]) : c10::IValue());
  stack.emplace_back(attr);
  stack.emplace_back(c10::List<std::optional<c10::Scalar>>());
  stack.emplace_back(algorithm.empty() ? c10::IValue() : c10::IValue(algorithm));
  const at::Tensor& out = t.tensors[0];
  {
    const PlannedOutput planned(out, {t.tensors[1]});
    onednn_linear().callBoxed(&stack);
    planned.land(stack[0].toTensor());
  }
  for (size_t i = fused ? 1 : 0; i < t.epilogue.size(); ++i) apply_pointwise(t.epilogue[i], out, out, t.tensors);
}

}  // namespace aspen
