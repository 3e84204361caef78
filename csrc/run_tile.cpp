#include "tile_spec.h"

#include <c10/util/Exception.h>

namespace aspen {

void run_conv2d(const TileSpec& t);
void run_max_pool2d(const TileSpec& t);
void run_avg_pool2d(const TileSpec& t);
void run_linear(const TileSpec& t);
void run_mean(const TileSpec& t);
void run_copy(const TileSpec& t);
void run_pointwise(const TileSpec& t);
void run_epilogue(const TileSpec& t);
void run_record(const TileSpec& t, int dse_index);
void run_thread_probe(const TileSpec& t);

void run_tile(const TileSpec& tile, int dse_index) {
  switch (tile.kind) {
    case TileKind::kPointwise: run_pointwise(tile); return;  // its epilogue is its body
    case TileKind::kConv2d: run_conv2d(tile); break;
    case TileKind::kMaxPool2d: run_max_pool2d(tile); break;
    case TileKind::kAvgPool2d: run_avg_pool2d(tile); break;
    case TileKind::kMean: run_mean(tile); break;
    case TileKind::kLinear: run_linear(tile); break;
    case TileKind::kCopy: run_copy(tile); break;
    case TileKind::kRecord: run_record(tile, dse_index); return;
    case TileKind::kThreadProbe: run_thread_probe(tile); return;
    default: TORCH_CHECK(false, "aspen: unknown tile kind ", static_cast<int>(tile.kind));
  }
  run_epilogue(tile);
}

}  // namespace aspen
