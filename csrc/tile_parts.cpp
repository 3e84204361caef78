#include "tile_parts.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace aspen {

bool kind_splits_by_rows(TileKind kind) {
  switch (kind) {
    case TileKind::kLinear:
    case TileKind::kPackedLinear:
    case TileKind::kMklLinear:
    case TileKind::kPointwise:
    case TileKind::kCopy: return true;
    default: return false;
  }
}

void check_tile_parts(const TileSpec& t) {
  TORCH_CHECK(t.parts >= 1, "aspen: tile '", t.label, "' has ", t.parts, " parts");
  if (t.parts == 1) return;
  TORCH_CHECK(kind_splits_by_rows(t.kind), "aspen: tile '", t.label, "' of kind ", static_cast<int>(t.kind),
              " cannot be cut into parts");
  TORCH_CHECK(t.split_dims.size() == t.tensors.size(), "aspen: tile '", t.label, "' has ", t.tensors.size(),
              " tensors but ", t.split_dims.size(), " split dims");
  const int64_t out_dim = t.split_dims[0];
  TORCH_CHECK(out_dim >= 0 && out_dim < t.tensors[0].dim(), "aspen: tile '", t.label,
              "': its output's split dim ", out_dim, " is not one of its dims");
  const int64_t extent = t.tensors[0].size(out_dim);
  TORCH_CHECK(t.parts <= extent, "aspen: tile '", t.label, "' has ", t.parts, " parts of ", extent, " rows");
  for (size_t i = 1; i < t.tensors.size(); ++i) {
    const int64_t d = t.split_dims[i];
    if (d < 0) continue;
    TORCH_CHECK(t.tensors[i].defined() && d < t.tensors[i].dim() && t.tensors[i].size(d) == extent,
                "aspen: tile '", t.label, "': tensor ", i, " has no dim ", d, " of the output's ", extent, " rows");
  }
}

TileSpec tile_part(const TileSpec& t, int32_t part) {
  TORCH_INTERNAL_ASSERT(part >= 0 && part < t.parts);
  // The same near-equal ranges as the planner's split_range.
  const int64_t extent = t.tensors[0].size(t.split_dims[0]);
  const int64_t base = extent / t.parts, extra = extent % t.parts;
  const int64_t start = part * base + std::min<int64_t>(part, extra);
  const int64_t length = base + (part < extra ? 1 : 0);
  TileSpec p{t.kind, {}, t.ints, t.epilogue, {}, nullptr};
  p.tensors.reserve(t.tensors.size());
  for (size_t i = 0; i < t.tensors.size(); ++i) {
    const bool split = t.split_dims[i] >= 0;
    p.tensors.push_back(split ? t.tensors[i].narrow(t.split_dims[i], start, length) : t.tensors[i]);
  }
  return p;
}

}  // namespace aspen
