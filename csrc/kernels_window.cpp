// Sliding-window tiles (convolution and pooling) over a band of output rows.
// A band's input region is clipped to the real rows; the rows that fall in
// the op's padding are pad_top / pad_bottom. For ATen's kernels equal pads are
// passed as symmetric padding and unequal ones (the first and last band) are
// materialised; max pooling clips its windows itself.
#include "kernels.h"
#include "lost_nan_watch.h"
#include "planned_output.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <limits>

namespace aspen {
namespace {

struct RowPadding {
  at::Tensor input;
  int64_t pad_h;
};

// Average pooling (whose padding counts zeros) sees zero rows.
RowPadding symmetric_rows(const at::Tensor& input, int64_t top, int64_t bottom) {
  if (top == bottom) return {input, top};
  return {at::constant_pad_nd(input, {0, 0, top, bottom}, 0.0), 0};
}

// A convolution's band as oneDNN takes it: channels-last, with equal padding on both sides.
// A band of an input in another layout (a CNN's image, kept in the caller's layout so the
// copy in stays a plain copy) is converted here, in one copy with its unequal padding.
RowPadding channels_last_rows(const at::Tensor& input, int64_t top, int64_t bottom) {
  const bool channels_last = input.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (top == bottom && channels_last) return {input, top};
  if (top == bottom) return {input.contiguous(at::MemoryFormat::ChannelsLast), top};
  std::vector<int64_t> sizes = input.sizes().vec();
  sizes[2] += top + bottom;
  at::Tensor padded = at::empty(sizes, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (top > 0) padded.narrow(2, 0, top).zero_();
  if (bottom > 0) padded.narrow(2, sizes[2] - bottom, bottom).zero_();
  padded.narrow(2, top, input.size(2)).copy_(input);
  return {padded, 0};
}

const c10::OperatorHandle& mkldnn_conv_inplace_add() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary");
  return op;
}

const c10::OperatorHandle& mkldnn_conv() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
  return op;
}

const c10::OperatorHandle& mkldnn_conv_add() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "binary");
  return op;
}

// The arguments after the input(s) that every form of oneDNN's convolution op takes.
void push_conv_args(torch::jit::Stack& stack, const TileSpec& t, int64_t pad_h) {
  const auto& v = t.ints;
  stack.emplace_back(t.tensors[2]);
  stack.emplace_back(t.tensors[3].defined() ? c10::IValue(t.tensors[3]) : c10::IValue());
  stack.emplace_back(std::vector<int64_t>{pad_h, v[4]});
  stack.emplace_back(std::vector<int64_t>{v[0], v[1]});
  stack.emplace_back(std::vector<int64_t>{v[5], v[6]});
  stack.emplace_back(v[7]);
}

// Whether `view` is `operand`'s own bytes in its own layout: a dying residual the memory
// plan put the output over (memory_plan.py).
bool over_itself(const at::Tensor& view, const at::Tensor& operand) {
  return view.data_ptr() == operand.data_ptr() && view.strides() == operand.strides() &&
         view.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Whether the epilogue step after the conv (and its fused residual add) is a relu.
bool relu_follows(const TileSpec& t, bool residual) {
  const size_t next = residual ? 1 : 0;
  return t.epilogue.size() > next && t.epilogue[next].op == PointwiseOp::kRelu;
}

// Convolves into the output view. Over a dying residual's own bytes, oneDNN's in-place
// binary-add form adds conv(x) to them; otherwise oneDNN's plain or binary-add form, whose
// output allocation is the view itself (PlannedOutput), so that the view is neither filled
// first nor read back and a residual is read where it lies (ResNet-50 B8 / B32 on the Intel
// host, paired against filling the view with zeros or the residual for the in-place form:
// 3.1% / 1.2-3.6% faster). With `fuse_relu` the relu after them is oneDNN's post-op, whose
// loss of a NaN the returned flag reports (lost_nan_watch.h); else it runs afterwards with
// the other epilogue steps, in place, on the tile while it is still in cache. An
// output-channel block's view is a channel slice of a channels-last buffer, not dense:
// oneDNN's output is copied over it.
bool convolve(const TileSpec& t, bool fuse_relu) {
  const at::Tensor& view = t.tensors[0];
  // oneDNN writes the output in the input's layout; the output view is channels-last.
  const RowPadding in = channels_last_rows(t.tensors[1], t.ints[2], t.ints[3]);
  const auto& epilogue = t.epilogue;
  const bool residual = leads_with_residual_add(t);
  const at::Tensor* operand = residual ? &t.tensors[epilogue[0].operand] : nullptr;
  const c10::IValue relu = fuse_relu ? c10::IValue(std::string("relu")) : c10::IValue();

  torch::jit::Stack stack;
  stack.reserve(13);
  const bool in_place = residual && over_itself(view, *operand);
  if (in_place) stack.emplace_back(view);
  stack.emplace_back(in.input);
  if (residual && !in_place) stack.emplace_back(*operand);
  push_conv_args(stack, t, in.pad_h);
  if (residual) {
    stack.emplace_back(std::string("add"));
    stack.emplace_back(c10::Scalar(1.0));
    stack.emplace_back(relu);
  } else {
    stack.emplace_back(fuse_relu ? relu : c10::IValue(std::string("none")));
  }
  stack.emplace_back(c10::List<std::optional<c10::Scalar>>());
  stack.emplace_back(c10::IValue());
  bool lost_nan = false;
  if (in_place) {
    const LostNanWatch watch;
    mkldnn_conv_inplace_add().callBoxed(&stack);
    lost_nan = fuse_relu && watch.saw_nan();
    TORCH_INTERNAL_ASSERT(stack[0].toTensor().data_ptr() == view.data_ptr(), "oneDNN did not write in place");
  } else {
    const PlannedOutput planned(view, residual ? c10::ArrayRef<at::Tensor>{in.input, *operand}
                                               : c10::ArrayRef<at::Tensor>{in.input});
    {
      const LostNanWatch watch;
      (residual ? mkldnn_conv_add() : mkldnn_conv()).callBoxed(&stack);
      lost_nan = fuse_relu && watch.saw_nan();
    }
    planned.land(stack[0].toTensor());
  }
  const size_t fused_steps = (residual ? 1 : 0) + (fuse_relu ? 1 : 0);
  for (size_t i = fused_steps; i < epilogue.size(); ++i) apply_pointwise(epilogue[i], view, view, t.tensors);
  return lost_nan;
}

// Numbers of both signs in [-1, 1) in a fixed pattern: the probes below must not draw from
// torch's generator, whose state is the caller's.
at::Tensor probe_values(at::IntArrayRef sizes, at::MemoryFormat format) {
  at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(at::kFloat).memory_format(format));
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>((i * 37) % 16 - 8) / 8.0f;
  return t;
}

// A conv tile of `channels` channels on a 6x6 image for the check below: `residual` adds
// one (`in_place`: accumulating onto its bytes), then a relu.
struct ReluProbe {
  TileSpec spec;
  at::Tensor input;
  at::Tensor residual;
};

ReluProbe relu_probe(int64_t channels, int64_t kernel, bool residual, bool in_place) {
  constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;
  const at::Tensor input = probe_values({1, channels, 6, 6}, kChannelsLast);
  const int64_t pad = kernel / 2;
  TileSpec spec{TileKind::kConv2d, {}, {1, 1, pad, pad, pad, 1, 1, 1}, {}, "relu probe"};
  spec.tensors = {at::empty_like(input), input,
                  probe_values({channels, channels, kernel, kernel}, at::MemoryFormat::Contiguous).mul_(0.1),
                  probe_values({channels}, at::MemoryFormat::Contiguous)};
  at::Tensor added;
  if (residual) {
    added = probe_values({1, channels, 6, 6}, kChannelsLast);
    if (in_place) spec.tensors[0] = added;
    spec.tensors.push_back(added);
    spec.epilogue.push_back(PointwiseStep{PointwiseOp::kAdd, 4, 1.0, 0.0});
  }
  spec.epilogue.push_back(PointwiseStep{PointwiseOp::kRelu, -1, 0.0, 0.0});
  return {std::move(spec), input, added};
}

// Whether oneDNN's fused relu, on this machine and thread, reports every NaN it turns into 0
// (the invalid flag rises, lost_nan_watch.h) and none on numbers, in each form convolve
// calls: checked once per process on a 3x3 and a 1x1 probe with a NaN in the input or the
// residual. oneDNN's x86 kernels apply the relu with maxps, which raises the flag; where a
// kernel kept the NaN instead, nothing was lost.
bool fused_relu_reports_lost_nan() {
  static const bool reports = [] {
    if (!LostNanWatch::kAvailable) return false;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t kernel : {1, 3}) {
      for (const auto& [residual, in_place] : {std::pair{false, false}, {true, false}, {true, true}}) {
        if (convolve(relu_probe(16, kernel, residual, in_place).spec, true)) return false;
        for (bool in_residual : {false, true}) {
          if (in_residual && !residual) continue;
          ReluProbe probe = relu_probe(16, kernel, residual, in_place);
          (in_residual ? probe.residual : probe.input)[0][5][2][3] = nan;
          const bool reported = convolve(probe.spec, true);
          if (!reported && !probe.spec.tensors[0].isnan().any().item<bool>()) return false;
        }
      }
    }
    return true;
  }();
  return reports;
}

}  // namespace

// A relu is fused only on a DSE's single thread: oneDNN's threads would raise their own flags.
bool run_conv2d(const TileSpec& t, ReluFusion relu) {
  if (t.ints.size() > 8 && t.ints[8] != 0) {
    run_conv_as_mkl_gemm(t);  // its relu runs as an epilogue pass: no NaN is lost
    return false;
  }
  const bool fuse_relu = relu == ReluFusion::kFused && relu_follows(t, leads_with_residual_add(t)) &&
                         at::get_num_threads() == 1 && fused_relu_reports_lost_nan();
  return convolve(t, fuse_relu);
}

namespace {

// out[c] = max(out[c], in[c]) over `channels`, NaN-propagating as ATen's max pooling is:
// a NaN input wins and then stays.
void max_into(float* out, int64_t out_stride, const float* in, int64_t in_stride, int64_t channels) {
  if (out_stride == 1 && in_stride == 1) {  // channels-last: a contiguous, vectorisable loop
    for (int64_t c = 0; c < channels; ++c) out[c] = (in[c] > out[c] || in[c] != in[c]) ? in[c] : out[c];
    return;
  }
  for (int64_t c = 0; c < channels; ++c) {
    const float v = in[c * in_stride];
    float& m = out[c * out_stride];
    m = (v > m || v != v) ? v : m;
  }
}

}  // namespace

// Max pooling straight from the band's input rows into the output view: windows are clipped
// to the rows the band holds (pad_top says where they start), so neither the padding nor the
// result is materialised, and no indices are computed. Channels-last runs over contiguous
// channels per tap.
void run_max_pool2d(const TileSpec& t) {
  const auto& v = t.ints;
  const at::Tensor& out = t.tensors[0];
  const at::Tensor& in = t.tensors[1];
  TORCH_CHECK(in.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "aspen: max pooling tiles take float32");
  const int64_t kh = v[0], kw = v[1], sh = v[2], sw = v[3], pad_top = v[4], pad_w = v[5], dh = v[6], dw = v[7];
  const int64_t batch = out.size(0), channels = out.size(1), out_h = out.size(2), out_w = out.size(3);
  const int64_t in_h = in.size(2), in_w = in.size(3);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const auto is = in.strides();
  const auto os = out.strides();
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t oh = 0; oh < out_h; ++oh) {
      for (int64_t ow = 0; ow < out_w; ++ow) {
        float* o = dst + n * os[0] + oh * os[2] + ow * os[3];
        for (int64_t c = 0; c < channels; ++c) o[c * os[1]] = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < kh; ++i) {
          const int64_t h = oh * sh - pad_top + i * dh;
          if (h < 0 || h >= in_h) continue;
          for (int64_t j = 0; j < kw; ++j) {
            const int64_t w = ow * sw - pad_w + j * dw;
            if (w < 0 || w >= in_w) continue;
            max_into(o, os[1], src + n * is[0] + h * is[2] + w * is[3], is[1], channels);
          }
        }
      }
    }
  }
}

void run_avg_pool2d(const TileSpec& t) {
  const auto& v = t.ints;
  // The APU only splits rows of an average pool whose padding counts in the
  // divisor, so explicit zero rows give the same result as implicit padding.
  const RowPadding in = symmetric_rows(t.tensors[1], v[4], v[5]);
  const std::optional<int64_t> divisor = v[9] != 0 ? std::optional<int64_t>(v[9]) : std::nullopt;
  t.tensors[0].copy_(at::avg_pool2d(in.input, {v[0], v[1]}, {v[2], v[3]}, {in.pad_h, v[6]},
                                    v[7] != 0, v[8] != 0, divisor));
}

}  // namespace aspen
