// Sliding-window tiles (convolution and pooling) over a band of output rows.
// A band's input region is clipped to the real rows; the rows that fall in
// the op's padding are pad_top / pad_bottom. Equal pads are passed to the
// kernel as symmetric padding; unequal ones (the first and last band) are
// materialised with constant_pad_nd so the kernel sees symmetric padding.
#include "kernels.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/max_pool2d.h>

#include <limits>

namespace aspen {
namespace {

struct RowPadding {
  at::Tensor input;
  int64_t pad_h;
};

RowPadding symmetric_rows(const at::Tensor& input, int64_t top, int64_t bottom, double fill) {
  if (top == bottom) return {input, top};
  return {at::constant_pad_nd(input, {0, 0, top, bottom}, fill), 0};
}

const c10::OperatorHandle& mkldnn_conv_inplace_add() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary");
  return op;
}

}  // namespace

// Writes conv(x) straight into the output view with oneDNN's in-place binary-add
// form: the view is first filled with the residual (a leading epilogue add) or
// zeros, and a following relu runs as a oneDNN post-op (the only activation
// oneDNN's in-place form accepts after the add). No output is
// allocated and the result is written once. Epilogue steps it could not fuse
// run afterwards, in place.
void run_conv2d(const TileSpec& t) {
  const auto& v = t.ints;
  const at::Tensor& out = t.tensors[0];
  TORCH_CHECK(out.is_contiguous(at::MemoryFormat::ChannelsLast) || out.is_contiguous(),
              "aspen: convolution tile output view is not dense");
  RowPadding in = symmetric_rows(t.tensors[1], v[2], v[3], 0.0);
  // oneDNN writes the output in the input's layout; the output view is channels-last.
  if (!in.input.is_contiguous(at::MemoryFormat::ChannelsLast))
    in.input = in.input.contiguous(at::MemoryFormat::ChannelsLast);

  size_t fused = 0;
  const auto& epilogue = t.epilogue;
  if (!epilogue.empty() && epilogue[0].op == PointwiseOp::kAdd && epilogue[0].a == 1.0 && epilogue[0].operand >= 0) {
    out.copy_(t.tensors[epilogue[0].operand]);
    fused = 1;
  } else {
    out.zero_();
  }
  const bool relu = fused < epilogue.size() && epilogue[fused].op == PointwiseOp::kRelu;
  fused += relu ? 1 : 0;

  torch::jit::Stack stack;
  stack.reserve(13);
  stack.emplace_back(out);
  stack.emplace_back(in.input);
  stack.emplace_back(t.tensors[2]);
  stack.emplace_back(t.tensors[3].defined() ? c10::IValue(t.tensors[3]) : c10::IValue());
  stack.emplace_back(std::vector<int64_t>{in.pad_h, v[4]});
  stack.emplace_back(std::vector<int64_t>{v[0], v[1]});
  stack.emplace_back(std::vector<int64_t>{v[5], v[6]});
  stack.emplace_back(v[7]);
  stack.emplace_back(std::string("add"));
  stack.emplace_back(c10::Scalar(1.0));
  stack.emplace_back(relu ? c10::IValue(std::string("relu")) : c10::IValue());
  stack.emplace_back(c10::List<std::optional<c10::Scalar>>());
  stack.emplace_back(c10::IValue());
  mkldnn_conv_inplace_add().callBoxed(&stack);
  TORCH_INTERNAL_ASSERT(stack[0].toTensor().data_ptr() == out.data_ptr(), "oneDNN did not write in place");

  for (size_t i = fused; i < epilogue.size(); ++i) apply_pointwise(epilogue[i], out, out, t.tensors);
}

void run_max_pool2d(const TileSpec& t) {
  const auto& v = t.ints;
  const RowPadding in = symmetric_rows(t.tensors[1], v[4], v[5], -std::numeric_limits<double>::infinity());
  t.tensors[0].copy_(at::max_pool2d(in.input, {v[0], v[1]}, {v[2], v[3]}, {in.pad_h, v[6]},
                                    {v[7], v[8]}, v[9] != 0));
}

void run_avg_pool2d(const TileSpec& t) {
  const auto& v = t.ints;
  // The APU only splits rows of an average pool whose padding counts in the
  // divisor, so explicit zero rows give the same result as implicit padding.
  const RowPadding in = symmetric_rows(t.tensors[1], v[4], v[5], 0.0);
  const std::optional<int64_t> divisor = v[9] != 0 ? std::optional<int64_t>(v[9]) : std::nullopt;
  t.tensors[0].copy_(at::avg_pool2d(in.input, {v[0], v[1]}, {v[2], v[3]}, {in.pad_h, v[6]},
                                    v[7] != 0, v[8] != 0, divisor));
}

}  // namespace aspen
