// The tile kernels, one per TileKind, and the pointwise step they share.
#pragma once

#include "tile_spec.h"

namespace aspen {

// Returns true when the relu it fused may have turned a NaN into 0 (tile_spec.h's run_tile).
bool run_conv2d(const TileSpec& t, ReluFusion relu);
void run_max_pool2d(const TileSpec& t);
void run_avg_pool2d(const TileSpec& t);
void run_linear(const TileSpec& t);
void run_mean(const TileSpec& t);
void run_copy(const TileSpec& t);
void run_pointwise(const TileSpec& t);
void run_epilogue(const TileSpec& t);
void run_record(const TileSpec& t, int dse_index);
void run_thread_probe(const TileSpec& t);
void run_aten_op(const TileSpec& t);
void run_packed_linear(const TileSpec& t);
void run_safe_softmax(const TileSpec& t);
void run_attention(const TileSpec& t);
void run_mkl_linear(const TileSpec& t);

// MKL's packed GEMM, where this torch has it (kernels_mkl_linear.cpp).
bool mkl_packed_gemm_available();
// `weight` [out_features, in_features] packed for products of `rows` rows.
at::Tensor pack_mkl_linear_weight(const at::Tensor& weight, int64_t rows);
// x [rows, in_features] times the weight `packed` holds, [rows, out_features].
at::Tensor mkl_packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t out_features);
// A kConv2d tile of a 1x1, stride-1 convolution whose weight MKL packed: the GEMM of its
// channels-last pixels, its bias, leading residual add and other epilogue steps.
void run_conv_as_mkl_gemm(const TileSpec& t);

// Whether the tile's epilogue starts by adding a tensor operand as it is (a residual), which
// the conv and MKL linear kernels fuse: oneDNN adds it as a binary operand or accumulates
// onto it in place; MKL's GEMM accumulates onto it put in the output first.
bool leads_with_residual_add(const TileSpec& t);

// out = step(in, operand); `in` may alias `out` (an in-place epilogue).
void apply_pointwise(const PointwiseStep& step, const at::Tensor& out, const at::Tensor& in,
                     const std::vector<at::Tensor>& tensors);

}  // namespace aspen
