// Pointwise ops, used both as standalone tiles and as epilogues fused into
// the tile that produced their input (applied in place on the output view).
#include "kernels.h"

#include <ATen/ops/abs.h>
#include <ATen/ops/add.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/div.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/tanh.h>

namespace aspen {

namespace {

void apply(const PointwiseStep& s, at::Tensor& o, const at::Tensor& in, const at::Tensor* operand) {
  switch (s.op) {
    case PointwiseOp::kAdd: at::add_out(o, in, *operand, s.a); return;
    case PointwiseOp::kSub: at::sub_out(o, in, *operand, s.a); return;
    case PointwiseOp::kRsub: at::sub_out(o, *operand, in, s.a); return;
    case PointwiseOp::kMul: at::mul_out(o, in, *operand); return;
    case PointwiseOp::kDiv: at::div_out(o, in, *operand); return;
    case PointwiseOp::kRelu: at::clamp_min_out(o, in, 0); return;
    case PointwiseOp::kClamp: at::clamp_out(o, in, s.a, s.b); return;
    case PointwiseOp::kSilu: at::silu_out(o, in); return;
    case PointwiseOp::kSigmoid: at::sigmoid_out(o, in); return;
    case PointwiseOp::kHardswish: at::hardswish_out(o, in); return;
    case PointwiseOp::kTanh: at::tanh_out(o, in); return;
    case PointwiseOp::kAbs: at::abs_out(o, in); return;
    case PointwiseOp::kNeg: at::neg_out(o, in); return;
    case PointwiseOp::kExp: at::exp_out(o, in); return;
    case PointwiseOp::kSqrt: at::sqrt_out(o, in); return;
    case PointwiseOp::kRsqrt: at::rsqrt_out(o, in); return;
    case PointwiseOp::kGelu: at::gelu_out(o, in, s.a != 0 ? "tanh" : "none"); return;
  }
  TORCH_INTERNAL_ASSERT(false, "unknown pointwise op ", static_cast<int>(s.op));
}

}  // namespace

void apply_pointwise(const PointwiseStep& s, const at::Tensor& out, const at::Tensor& in,
                     const std::vector<at::Tensor>& tensors) {
  TORCH_INTERNAL_ASSERT(s.operand < static_cast<int32_t>(tensors.size()));
  const at::Tensor* operand = s.operand >= 0 ? &tensors[s.operand] : nullptr;
  if (operand != nullptr && operand->sizes() != out.sizes()) {
    // An operand in the shape of the value the tile's output is a reshape of (lower.py,
    // _operand_region): the output is viewed in that shape, element for element.
    TORCH_INTERNAL_ASSERT(operand->numel() == out.numel(), "epilogue operand does not match the tile's output");
    at::Tensor o = out.view(operand->sizes());
    apply(s, o, in.view(operand->sizes()), operand);
    return;
  }
  at::Tensor& o = const_cast<at::Tensor&>(out);
  apply(s, o, in, operand);
}

bool leads_with_residual_add(const TileSpec& t) {
  if (t.epilogue.empty()) return false;
  const PointwiseStep& s = t.epilogue[0];
  return s.op == PointwiseOp::kAdd && s.a == 1.0 && s.operand >= 0;
}

void run_pointwise(const TileSpec& t) {
  TORCH_INTERNAL_ASSERT(!t.epilogue.empty());
  apply_pointwise(t.epilogue[0], t.tensors[0], t.tensors[1], t.tensors);
  for (size_t i = 1; i < t.epilogue.size(); ++i)
    apply_pointwise(t.epilogue[i], t.tensors[0], t.tensors[0], t.tensors);
}

void run_epilogue(const TileSpec& t) {
  for (const PointwiseStep& s : t.epilogue) apply_pointwise(s, t.tensors[0], t.tensors[0], t.tensors);
}

}  // namespace aspen
