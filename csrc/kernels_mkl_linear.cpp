// Linear tiles on weights packed by MKL (cblas_sgemm_pack), computed straight into the
// tile's output view. On Intel CPUs MKL's packed sgemm outruns oneDNN's packed linear
// (one thread, BERT-base's shapes with the weights streaming from memory: 161-175 against
// 141-159 GFLOP/s); on AMD it takes an AVX2 path at half the rate, so the APU picks the
// kernel by measuring both (apu/prepack.py).
//
// MKL is the copy statically linked into libtorch_cpu, which exports its CBLAS symbols.
// They are declared weak: a torch built without MKL leaves them null, and
// mkl_packed_gemm_available() then says so instead of the module failing to load.
#include "kernels.h"

#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <limits>

extern "C" {
// CBLAS (LP64: MKL_INT is int), as mkl_cblas.h declares them.
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace aspen {
namespace {

// mkl_cblas.h's enumerators.
constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;
constexpr int kPacked = 151;
constexpr int kBMatrix = 162;

int as_mkl_int(int64_t v) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "aspen: MKL GEMM dimension out of range: ", v);
  return static_cast<int>(v);
}

}  // namespace

bool mkl_packed_gemm_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

at::Tensor pack_mkl_linear_weight(const at::Tensor& weight, int64_t rows) {
  TORCH_CHECK(mkl_packed_gemm_available(), "aspen: this torch has no MKL packed GEMM");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.is_cpu(),
              "aspen: an MKL-packed weight is a float32 CPU matrix [out_features, in_features]");
  const at::Tensor w = weight.contiguous();
  const int n = as_mkl_int(w.size(0)), k = as_mkl_int(w.size(1)), m = as_mkl_int(rows);
  const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, m, n, k);
  at::Tensor packed = at::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}, w.options());
  // B = w^T (k x n), w stored row-major [n, k]: op(B) = transpose of the stored matrix.
  cblas_sgemm_pack(kRowMajor, kBMatrix, kTrans, m, n, k, 1.0f, w.data_ptr<float>(), k, packed.data_ptr<float>());
  return packed;
}

namespace {

// out (+)= x w^T, out's rows dense, with w packed by pack_mkl_linear_weight.
void packed_gemm(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed, float beta) {
  TORCH_INTERNAL_ASSERT(out.stride(1) == 1, "MKL linear: output columns must be dense");
  const at::Tensor a = x.stride(1) == 1 && x.stride(0) >= x.size(1) ? x : x.contiguous();
  const int m = as_mkl_int(out.size(0)), n = as_mkl_int(out.size(1)), k = as_mkl_int(a.size(1));
  cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, m, n, k, a.data_ptr<float>(), as_mkl_int(a.stride(0)),
                      packed.data_ptr<float>(), k, beta, out.data_ptr<float>(), as_mkl_int(out.stride(0)));
}

}  // namespace

at::Tensor mkl_packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t out_features) {
  TORCH_CHECK(mkl_packed_gemm_available(), "aspen: this torch has no MKL packed GEMM");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && packed.scalar_type() == at::kFloat,
              "aspen: mkl_packed_linear takes float32 x [rows, in_features] and a packed weight");
  at::Tensor out = at::empty({x.size(0), out_features}, x.options());
  packed_gemm(out, x, packed, 0.0f);
  return out;
}

// tensors: out [rows, cols], x [rows, k], MKL-packed weight, bias [cols] (may be undefined),
// weight_t [k, cols] (the unpacked columns); ints: the rows the weight was packed for, and
// whether that packing was checked to serve the rows of the tile's parts too.
// The output view is first filled with the bias and a leading residual add, then the GEMM
// accumulates into it (beta = 1). MKL documents a packing for the m it was made with only;
// the packings of this torch's MKL serve other row counts (checked per packing at compile
// time, apu/prepack.py), and where one was not shown to, a row part runs addmm on the
// unpacked columns, at half the rate for 16 rows.
void run_mkl_linear(const TileSpec& t) {
  const at::Tensor& out = t.tensors[0];
  const at::Tensor& x = t.tensors[1];
  const at::Tensor& bias = t.tensors[3];
  if (x.size(0) != t.ints[0] && t.ints[1] == 0) {
    if (bias.defined()) {
      at::addmm_out(const_cast<at::Tensor&>(out), bias, x, t.tensors[4]);
    } else {
      at::mm_out(const_cast<at::Tensor&>(out), x, t.tensors[4]);
    }
    run_epilogue(t);
    return;
  }
  float beta = 0.0f;
  if (bias.defined()) {
    out.copy_(bias.expand_as(out));
    beta = 1.0f;
  }
  const auto& epilogue = t.epilogue;
  const size_t fused = leads_with_residual_add(t) ? 1 : 0;
  if (fused) {
    if (beta == 0.0f) const_cast<at::Tensor&>(out).zero_();
    apply_pointwise(epilogue[0], out, out, t.tensors);
    beta = 1.0f;
  }
  packed_gemm(out, x, t.tensors[2], beta);
  for (size_t i = fused; i < epilogue.size(); ++i) apply_pointwise(epilogue[i], out, out, t.tensors);
}

namespace {

// The [pixels, channels] matrix of a 4-d view whose channels are dense and whose pixels lie
// evenly spaced (channels-last rows, as the APU cuts 1x1 GEMM tiles), or an undefined tensor.
at::Tensor pixel_rows(const at::Tensor& v) {
  if (v.dim() != 4 || (v.size(1) > 1 && v.stride(1) != 1)) return {};
  int64_t row = -1, inner = 1;  // pixel spacing; pixels in the dims inside the current one
  for (int d : {3, 2, 0}) {
    if (v.size(d) == 1) continue;
    if (row < 0) row = v.stride(d);
    if (v.stride(d) != row * inner) return {};
    inner *= v.size(d);
  }
  if (row < 0) row = v.size(1);  // a single pixel
  if (row < v.size(1)) return {};
  return v.as_strided({v.size(0) * v.size(2) * v.size(3), v.size(1)}, {row, 1});
}

// An input's pixel rows: the view, or those of a channels-last copy (a residual in the
// caller's layout).
at::Tensor input_pixel_rows(const at::Tensor& v) {
  at::Tensor rows = pixel_rows(v);
  return rows.defined() ? rows : pixel_rows(v.contiguous(at::MemoryFormat::ChannelsLast));
}

}  // namespace

// The output's pixel rows are filled with the bias (plus a leading residual, or onto the
// residual's own bytes where the memory plan put the output over them), then the GEMM
// accumulates into them; the rest of the epilogue (a relu) runs over the tile after.
void run_conv_as_mkl_gemm(const TileSpec& t) {
  const at::Tensor& out = t.tensors[0];
  const at::Tensor& bias = t.tensors[3];
  at::Tensor rows = pixel_rows(out);
  TORCH_INTERNAL_ASSERT(rows.defined(), "MKL conv GEMM: the output view is not channels-last pixel rows");
  const bool residual = leads_with_residual_add(t);
  float beta = 0.0f;
  if (residual) {
    const at::Tensor& operand = t.tensors[t.epilogue[0].operand];
    const bool over_itself = operand.data_ptr() == out.data_ptr() && operand.strides() == out.strides();
    if (!over_itself && bias.defined()) {
      at::add_out(rows, input_pixel_rows(operand), bias);
    } else if (!over_itself) {
      rows.copy_(input_pixel_rows(operand));
    } else if (bias.defined()) {
      rows.add_(bias);
    }
    beta = 1.0f;
  } else if (bias.defined()) {
    rows.copy_(bias.expand_as(rows));
    beta = 1.0f;
  }
  packed_gemm(rows, input_pixel_rows(t.tensors[1]), t.tensors[2], beta);
  for (size_t i = residual ? 1 : 0; i < t.epilogue.size(); ++i) apply_pointwise(t.epilogue[i], out, out, t.tensors);
}

}  // namespace aspen
