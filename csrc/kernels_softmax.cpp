// Safe softmax (aten._safe_softmax, the masked attention of SDPA): softmax whose rows
// that are -inf throughout come out as zeros. Its decomposition takes five passes over
// the scores (softmax, eq, all, full_like, where); here one softmax pass suffices, since
// only a row that is -inf throughout (or holds a NaN) gives a NaN in its first output,
// and only tiles that have such rows look at their inputs again.
#include "kernels.h"

#include <ATen/ops/_softmax.h>
#include <ATen/ops/all.h>
#include <ATen/ops/eq.h>
#include <ATen/ops/isnan.h>

#include <limits>

namespace aspen {

void run_safe_softmax(const TileSpec& t) {
  const at::Tensor& out = t.tensors[0];
  const at::Tensor& in = t.tensors[1];
  const int64_t dim = t.ints[0];
  // ATen's softmax out= kernel mishandles strided outputs, so those get a copy.
  if (out.is_contiguous()) {
    at::Tensor dense = out;
    at::_softmax_out(dense, in, dim, false);
  } else {
    out.copy_(at::_softmax(in, dim, false));
  }
  if (!at::isnan(out.narrow(dim, 0, 1)).any().item<bool>()) return;
  out.masked_fill_(at::eq(in, -std::numeric_limits<double>::infinity()).all(dim, /*keepdim=*/true), 0.0);
}

}  // namespace aspen
