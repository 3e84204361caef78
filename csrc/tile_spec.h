// A tile: one ATen kernel call on views of preallocated buffers, plus the
// pointwise epilogue applied in place to its output while it is still hot.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace aspen {

// Argument conventions per kind (tensors[0] is always the output view):
//   kConv2d      tensors: out, input region, prepacked weight, bias (may be undefined)
//                ints:    stride_h, stride_w, pad_top, pad_bottom, pad_w, dil_h, dil_w, groups,
//                         and optionally 1: a 1x1 stride-1 convolution whose weight [out, in]
//                         is packed by MKL for the tile's pixels, run as that GEMM
//   kMaxPool2d   tensors: out, input region
//                ints:    k_h, k_w, stride_h, stride_w, pad_top, pad_w, dil_h, dil_w (out's size says the rest)
//   kAvgPool2d   tensors: out, input region
//                ints:    k_h, k_w, stride_h, stride_w, pad_top, pad_bottom, pad_w, ceil_mode,
//                         count_include_pad, divisor_override (0 = none)
//   kMean        tensors: out, input region; ints: reduced dims (keepdim is implied by out's rank)
//   kLinear      tensors: out [rows, cols], input [rows, k], weight_t [k, cols], bias [cols] (may be undefined)
//   kPointwise   tensors: out, input, operands...; the op is epilogues[0] applied out of place
//   kCopy        tensors: out, input
//   kRecord      tensors: log (int64 [1 + 2 * capacity]); ints: tile id. Appends (id, dse) to the log.
//   kThreadProbe tensors: out (int64 [2]): [threads seen by at::parallel_for, at::get_num_threads()]
//   kPackedLinear tensors: out [rows, cols], input [rows, k], oneDNN-packed weight of its columns,
//                bias [cols] (may be undefined). A leading activation epilogue runs as a post-op.
//   kSafeSoftmax tensors: out, input; ints: dim. Softmax whose all -inf rows are zeros.
//   kAttention   tensors: out [batch, heads, queries, value dim], query, key, value (each
//                [batch, heads, rows, dim], dim dense), mask broadcasting to the scores
//                (may be undefined); ints: is_causal, the scale's float64 bits, has_scale.
//   kMklLinear   tensors: out [rows, cols], input [rows, k], MKL-packed weight of its columns,
//                bias [cols] (may be undefined), weight_t [k, cols] (unpacked, for row parts);
//                ints: rows the weight was packed for, 1 if the packing serves the rows of
//                the tile's parts too (else they run addmm). A leading residual add is fused.
//   kAtenOp      aten_call: any ATen op and its arguments (views included); result
//                `result_index` of its returns is copied into tensors[0]. tensors[1..]
//                are the views it reads (for epilogue operands).
enum class TileKind : int32_t {
  kConv2d = 0,
  kMaxPool2d = 1,
  kAvgPool2d = 2,
  kMean = 3,
  kLinear = 4,
  kPointwise = 5,
  kCopy = 6,
  kRecord = 7,
  kThreadProbe = 8,
  kAtenOp = 9,
  kPackedLinear = 10,
  kSafeSoftmax = 11,
  kAttention = 12,
  kMklLinear = 13,
};

enum class PointwiseOp : int32_t {
  kAdd = 0,       // out = in + a * operand
  kSub = 1,       // out = in - a * operand
  kMul = 2,       // out = in * operand
  kDiv = 3,       // out = in / operand
  kRelu = 4,
  kClamp = 5,     // clamp(in, a, b): relu6 and hardtanh
  kSilu = 6,
  kSigmoid = 7,
  kHardswish = 8,
  kTanh = 9,
  kRsub = 10,     // out = operand - a * in
  kAbs = 11,
  kNeg = 12,
  kExp = 13,
  kSqrt = 14,
  kRsqrt = 15,
  kGelu = 16,     // a = 0: exact (erf), a = 1: tanh approximation
};

struct PointwiseStep {
  PointwiseOp op;
  int32_t operand;  // index into TileSpec::tensors, or -1
  double a;
  double b;
};

struct AtenCall;  // aten_call.h: an operator handle with a boxed argument stack

struct TileSpec {
  TileKind kind;
  std::vector<at::Tensor> tensors;
  std::vector<int64_t> ints;
  std::vector<PointwiseStep> epilogue;
  std::string label;  // "node (aten op)" this tile computes, for errors and traces
  std::shared_ptr<const AtenCall> aten_call;  // kAtenOp only
  // Row parts (tile_parts.h): with parts > 1, part p narrows tensors[i] along split_dims[i]
  // (-1: the whole tensor) to the p-th of `parts` near-equal ranges of tensors[0]'s split dim.
  int32_t parts = 1;
  std::vector<int32_t> split_dims;
};

// How a tile applies a relu that follows its oneDNN convolution (lost_nan_watch.h).
enum class ReluFusion : int32_t {
  kFused,  // as oneDNN's post-op (NaN becomes 0), telling when that may have happened
  kExact,  // as a NaN-keeping pass over the output afterwards
};

// Runs one tile on the calling thread. Throws (c10::Error / std::exception) on failure.
// Returns true when a fused relu may have turned a NaN into 0 (the request must run again
// with ReluFusion::kExact).
bool run_tile(const TileSpec& tile, int dse_index, ReluFusion relu);

}  // namespace aspen
