#include "kernels.h"

#include <c10/util/Exception.h>

namespace aspen {

bool run_tile(const TileSpec& tile, int dse_index, ReluFusion relu) {
  switch (tile.kind) {
    case TileKind::kPointwise: run_pointwise(tile); return false;  // its epilogue is its body
    case TileKind::kConv2d: return run_conv2d(tile, relu);  // fuses what it can of its epilogue itself
    case TileKind::kMaxPool2d: run_max_pool2d(tile); break;
    case TileKind::kAvgPool2d: run_avg_pool2d(tile); break;
    case TileKind::kMean: run_mean(tile); break;
    case TileKind::kLinear: run_linear(tile); break;
    case TileKind::kCopy: run_copy(tile); break;
    case TileKind::kAtenOp: run_aten_op(tile); break;
    case TileKind::kSafeSoftmax: run_safe_softmax(tile); break;
    case TileKind::kAttention: run_attention(tile); break;
    case TileKind::kPackedLinear: run_packed_linear(tile); return false;  // fuses its leading activation itself
    case TileKind::kMklLinear: run_mkl_linear(tile); return false;  // fuses its leading residual add itself
    case TileKind::kRecord: run_record(tile, dse_index); return false;
    case TileKind::kThreadProbe: run_thread_probe(tile); return false;
    default: TORCH_CHECK(false, "aspen: unknown tile kind ", static_cast<int>(tile.kind));
  }
  run_epilogue(tile);
  return false;
}

}  // namespace aspen
