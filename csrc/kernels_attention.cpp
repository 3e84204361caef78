// Attention tiles: softmax(scale * Q K^T + mask) V for a block of (batch, head, query) rows.
//
// ATen's CPU flash kernel runs its block GEMMs through MKL, which takes its AVX2 path on
// AMD CPUs: ~75 GFLOP/s for BERT's 12 heads of 128 x 64 on one thread of the project's
// Zen 5 VM, against ~180 for the AVX-512 kernel here (~130 per DSE inside BERT-base B8,
// where attention's DSE time fell from 71-77 to 36-37 ms). On the Intel host of the
// eighteenth session MKL takes its AVX-512 path and ATen's kernel runs ~85-90 GFLOP/s, this
// one ~92 (BERT-base's 8 x 12 heads, half the batch padded). Per (batch, head) it transposes K
// once into a scratch [head dim x keys]; then for 6 query rows at a time it keeps the
// rows' scores for 64 keys in 24 registers, stores the rows' scores (all keys) in a small
// scratch that stays in L1, applies the softmax there, and accumulates P V for 64 value
// columns in 24 registers. A causal mask sets the scores of later keys to -inf; like ATen's
// kernel (up to 512 keys) it computes every score and every key's P V term, so a NaN in a
// later key's value still makes the row NaN. Shapes it does not cover go to ATen's kernel:
// a head dim not a multiple of 16, more than 512 keys, a mask not dense along keys, other
// dtypes, a CPU without AVX-512.
#include "kernels.h"

#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

// GCC 12's AVX-512 reductions (_mm512_reduce_*) read deliberately undefined vectors, which
// its -Wmaybe-uninitialized reports wherever they are inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace aspen {
namespace {

constexpr int kRows = 6;    // query rows per register block
constexpr int kVectors = 4;  // 16-float vectors per register block row (64 keys or value columns)

#define ASPEN_AVX512 __attribute__((target("avx512f,fma")))

// e^x to ~1 ulp: x = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial for e^r, then
// scaling by 2^n (AVX-512's scalef). Below x = -86 the result is 0, not e^x's smallest
// normal and denormal floats (< 5e-38): an underflowing scalef costs Intel cores a
// microcode assist per lane, and a masked key's score (-inf, or transformers' float32 min)
// underflows in every row (attention tiles on the Intel host 1.4x slower). x is clamped
// with x as the NaN-propagating operand of the max, so e^NaN = NaN; e^-inf = 0.
ASPEN_AVX512 inline __m512 exp512(__m512 x) {
  constexpr float kLowest = -86.0f;  // 2^n stays >= 2^-124: p 2^n is a normal float
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kLowest), _CMP_NLT_UQ);  // or NaN
  x = _mm512_max_ps(_mm512_set1_ps(kLowest), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(normal, _mm512_scalef_ps(p, n));
}

struct Head {
  const float* q;  // [queries, dim], rows `q_stride` apart
  int64_t q_stride;
  const float* v;  // [keys, value dim], rows `v_stride` apart
  int64_t v_stride;
  const float* mask;  // [queries, keys] added to the scores, rows `mask_stride` apart (0: broadcast); or null
  int64_t mask_stride;
  float* out;  // [queries, value dim], rows `out_stride` apart
  int64_t out_stride;
  int64_t keys, padded_keys, dim, value_dim;
  float scale;
  bool causal;  // query i sees keys 0..i (the tile holds every query, from the first)
  const float* kt;  // K transposed: [dim, padded_keys], zero beyond `keys`
  float* p;         // scratch: [kRows, padded_keys]
};

// acc[r][c] = sum over x < steps of a[r * a_row + x] * b[x * b_step + 16 c .. + 16): the
// register-blocked product both halves of attention are (Q K^T and P V).
template <int R, int V>
ASPEN_AVX512 __attribute__((always_inline)) inline void block_product(__m512 (&acc)[R][V], const float* a,
                                                                      int64_t a_row, const float* b, int64_t b_step,
                                                                      int64_t steps) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < V; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t x = 0; x < steps; ++x) {
    __m512 bx[V];
#pragma GCC unroll 4
    for (int c = 0; c < V; ++c) bx[c] = _mm512_loadu_ps(b + x * b_step + 16 * c);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 ax = _mm512_set1_ps(a[r * a_row + x]);
#pragma GCC unroll 4
      for (int c = 0; c < V; ++c) acc[r][c] = _mm512_fmadd_ps(ax, bx[c], acc[r][c]);
    }
  }
}

// p[r, j0 .. j0 + 16 V) = scale * q[i + r] . K[j] + mask[i + r, j], for R rows.
template <int R, int V>
ASPEN_AVX512 __attribute__((always_inline)) inline void score_block(const Head& h, int64_t i, int64_t j0) {
  __m512 acc[R][V];
  block_product<R, V>(acc, h.q + i * h.q_stride, h.q_stride, h.kt + j0, h.padded_keys, h.dim);
  const __m512 scale = _mm512_set1_ps(h.scale);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < V; ++c) {
      __m512 s = _mm512_mul_ps(acc[r][c], scale);
      if (h.mask != nullptr) {
        const float* m = h.mask + (i + r) * h.mask_stride + j0 + 16 * c;
        const int64_t valid = h.keys - (j0 + 16 * c);
        const __mmask16 lanes = valid >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << valid) - 1);
        s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(lanes, m));
      }
      if (h.causal) {  // keys after the query: -inf, over whatever the product gave (a NaN included), as ATen does
        const __m512i key = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(j0 + 16 * c)),
                                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        const __mmask16 after = _mm512_cmpgt_epi32_mask(key, _mm512_set1_epi32(static_cast<int32_t>(i + r)));
        s = _mm512_mask_mov_ps(s, after, _mm512_set1_ps(-std::numeric_limits<float>::infinity()));
      }
      _mm512_storeu_ps(h.p + r * h.padded_keys + j0 + 16 * c, s);
    }
}

// out[i + r, d0 .. d0 + 16 V) = inv[r] * sum_j p[r, j] v[j], for R rows.
template <int R, int V>
ASPEN_AVX512 __attribute__((always_inline)) inline void value_block(const Head& h, int64_t i, int64_t d0,
                                                                    const float* inv) {
  __m512 acc[R][V];
  block_product<R, V>(acc, h.p, h.padded_keys, h.v + d0, h.v_stride, h.keys);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512 scale = _mm512_set1_ps(inv[r]);
#pragma GCC unroll 4
    for (int c = 0; c < V; ++c)
      _mm512_storeu_ps(h.out + (i + r) * h.out_stride + d0 + 16 * c, _mm512_mul_ps(acc[r][c], scale));
  }
}

// One product for R query rows, kVectors vectors of 16 columns (keys for Q K^T into p, value columns
// for P V into out) at a time, the last block narrower.
enum class Product { kScores, kValues };

template <int R, int V, Product kProduct>
ASPEN_AVX512 __attribute__((always_inline)) inline void product_block(const Head& h, int64_t i, int64_t c0,
                                                                      const float* inv) {
  if constexpr (kProduct == Product::kScores) {
    score_block<R, V>(h, i, c0);
  } else {
    value_block<R, V>(h, i, c0, inv);
  }
}

template <int R, Product kProduct>
ASPEN_AVX512 void product_rows(const Head& h, int64_t i, const float* inv) {
  const int64_t columns = kProduct == Product::kScores ? h.padded_keys : h.value_dim;
  for (int64_t c0 = 0; c0 < columns; c0 += 16 * kVectors) {
    switch (std::min<int64_t>(kVectors, (columns - c0) / 16)) {
      case 4: product_block<R, 4, kProduct>(h, i, c0, inv); break;
      case 3: product_block<R, 3, kProduct>(h, i, c0, inv); break;
      case 2: product_block<R, 2, kProduct>(h, i, c0, inv); break;
      default: product_block<R, 1, kProduct>(h, i, c0, inv); break;
    }
  }
}

// Softmax of `rows` rows of scores in place; inv[r] = 1 / (row r's sum). Fully masked rows
// (every score -inf) give zeros, and NaN scores follow ATen's kernel, the one eager runs
// (one block of keys, up to 512): its row max propagates a NaN among the leading whole
// 16-float vectors but drops one among the last keys % 16, so a row whose only non-NaN
// scores are -inf gives zeros, and any other row holding a NaN is NaN.
ASPEN_AVX512 void softmax_rows(const Head& h, int rows, float* inv) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t whole = h.keys / 16 * 16;
  for (int r = 0; r < rows; ++r) {
    float* row = h.p + r * h.padded_keys;
    std::fill(row + h.keys, row + h.padded_keys, -kInf);
    __m512 m = _mm512_set1_ps(-kInf);
    __mmask16 nan_whole = 0, nan_last = 0;
    for (int64_t j = 0; j < h.padded_keys; j += 16) {
      const __m512 x = _mm512_loadu_ps(row + j);
      const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      m = _mm512_mask_max_ps(m, static_cast<__mmask16>(~nan), m, x);
      (j < whole ? nan_whole : nan_last) |= nan;
    }
    const float row_max = _mm512_reduce_max_ps(m);  // of the non-NaN scores
    if (nan_whole != 0 || (nan_last != 0 && row_max != -kInf)) {
      std::fill(row, row + h.padded_keys, std::numeric_limits<float>::quiet_NaN());
      inv[r] = 1.0f;
      continue;
    }
    if (row_max == -kInf) {
      std::fill(row, row + h.padded_keys, 0.0f);
      inv[r] = 0.0f;
      continue;
    }
    const __m512 shift = _mm512_set1_ps(row_max);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < h.padded_keys; j += 16) {
      const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + j), shift));
      _mm512_storeu_ps(row + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
  }
}

template <int R>
ASPEN_AVX512 void attend_rows(const Head& h, int64_t i) {
  float inv[R];
  product_rows<R, Product::kScores>(h, i, nullptr);
  softmax_rows(h, R, inv);
  product_rows<R, Product::kValues>(h, i, inv);
}

ASPEN_AVX512 void attend_head(const Head& h, int64_t queries) {
  int64_t i = 0;
  for (; i + kRows <= queries; i += kRows) attend_rows<kRows>(h, i);
  for (; i < queries; ++i) attend_rows<1>(h, i);
}

// r[i] = column i of the 16 x 16 block whose rows r held: pairs of rows interleaved, then
// pairs of pairs, then 128-bit lanes gathered across the four groups of four rows.
ASPEN_AVX512 __attribute__((always_inline)) inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // r[4g + m], lane k: column 4k + m of rows 4g .. 4g + 3.
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 even0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x88), odd0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xdd);
    const __m512 even1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x88);
    const __m512 odd1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xdd);
    t[m] = _mm512_shuffle_f32x4(even0, even1, 0x88);
    t[8 + m] = _mm512_shuffle_f32x4(even0, even1, 0xdd);
    t[4 + m] = _mm512_shuffle_f32x4(odd0, odd1, 0x88);
    t[12 + m] = _mm512_shuffle_f32x4(odd0, odd1, 0xdd);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// kt [dim, padded_keys] = K^T, zero beyond `keys`, in 16 x 16 blocks (a scalar scatter of
// K's rows took a third as long as the scores' product on the Intel host).
ASPEN_AVX512 void transpose_keys(const float* key, int64_t key_stride, int64_t keys, int64_t dim,
                                 int64_t padded_keys, float* kt) {
  for (int64_t j0 = 0; j0 < padded_keys; j0 += 16) {
    const int64_t rows = std::min<int64_t>(16, keys - j0);
    for (int64_t d0 = 0; d0 < dim; d0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_loadu_ps(key + (j0 + i) * key_stride + d0) : _mm512_setzero_ps();
      transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(kt + (d0 + i) * padded_keys + j0, r[i]);
    }
  }
}

bool cpu_has_avx512() {
  static const bool has = [] {
    __builtin_cpu_init();  // the CPU model may not be read yet when a library is loaded late
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  }();
  return has;
}

bool fits_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                 bool causal) {
  if (!cpu_has_avx512()) return false;
  for (const at::Tensor* t : {&q, &k, &v})
    if (t->scalar_type() != at::kFloat || t->dim() != 4 || t->stride(3) != 1 || t->size(3) % 16 != 0) return false;
  // Up to 512 keys ATen's kernel takes the keys as one block (see softmax_rows).
  if (k.size(2) == 0 || k.size(2) > 512 || k.size(1) == 0 || q.size(1) % k.size(1) != 0) return false;
  if (causal && mask.defined()) return false;  // SDPA takes one or the other
  if (!mask.defined()) return true;
  // Dense along keys: the kernel reads a mask row as keys consecutive floats.
  return mask.scalar_type() == at::kFloat && mask.dim() <= 4 && mask.size(-1) == k.size(2) && mask.stride(-1) == 1;
}

}  // namespace

void run_attention(const TileSpec& t) {
  const at::Tensor& out = t.tensors[0];  // [batch, heads, queries, value dim]
  const at::Tensor &q = t.tensors[1], &k = t.tensors[2], &v = t.tensors[3], &mask = t.tensors[4];
  const bool causal = t.ints[0] != 0;
  double scale_given;
  std::memcpy(&scale_given, &t.ints[1], sizeof scale_given);
  const bool has_scale = t.ints[2] != 0;
  if (!fits_kernel(q, k, v, mask, causal) || out.stride(3) != 1) {
    const auto result = at::_scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt,
        has_scale ? std::optional<double>(scale_given) : std::nullopt);
    out.copy_(std::get<0>(result));
    return;
  }
  const int64_t batch = q.size(0), heads = q.size(1), queries = q.size(2), dim = q.size(3);
  const int64_t kv_heads = k.size(1), keys = k.size(2), value_dim = v.size(3);
  const int64_t padded_keys = (keys + 15) / 16 * 16;
  const at::Tensor scores_bias = mask.defined() ? mask.expand({batch, heads, queries, keys}) : mask;
  // Scratch per DSE thread, grown to the largest head seen: no allocation per tile.
  thread_local std::vector<float> kt, p;
  kt.resize(std::max<size_t>(kt.size(), dim * padded_keys));
  p.resize(std::max<size_t>(p.size(), kRows * padded_keys));
  Head h{};
  h.keys = keys;
  h.padded_keys = padded_keys;
  h.dim = dim;
  h.value_dim = value_dim;
  h.scale = static_cast<float>(has_scale ? scale_given : 1.0 / std::sqrt(static_cast<double>(dim)));
  h.causal = causal;
  h.kt = kt.data();
  h.p = p.data();
  h.q_stride = q.stride(2);
  h.v_stride = v.stride(2);
  h.out_stride = out.stride(2);
  h.mask_stride = mask.defined() ? scores_bias.stride(2) : 0;
  const int64_t group = heads / kv_heads;  // grouped-query attention: query head i reads kv head i / group
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t kv = 0; kv < kv_heads; ++kv) {
      // Key rows are read whole (one pass over K) into kt, which stays in L1.
      transpose_keys(k.data_ptr<float>() + b * k.stride(0) + kv * k.stride(1), k.stride(2), keys, dim, padded_keys,
                     kt.data());
      h.v = v.data_ptr<float>() + b * v.stride(0) + kv * v.stride(1);
      for (int64_t head = kv * group; head < (kv + 1) * group; ++head) {
        h.q = q.data_ptr<float>() + b * q.stride(0) + head * q.stride(1);
        h.out = out.data_ptr<float>() + b * out.stride(0) + head * out.stride(1);
        h.mask = mask.defined() ? scores_bias.data_ptr<float>() + b * scores_bias.stride(0) +
                                      head * scores_bias.stride(1)
                                : nullptr;
        attend_head(h, queries);
      }
    }
  }
}

}  // namespace aspen
