// A Program is an immutable tile graph: tiles, dependency counts and child
// lists. It holds no run state, so one Program can serve many requests and
// several Programs (tenants) can share one Runtime.
#pragma once

#include "tile_spec.h"

#include <cstdint>
#include <vector>

namespace aspen {

class Program {
 public:
  // Validates the edges (in range, no self loops, acyclic) and builds the CSR child lists.
  Program(std::vector<TileSpec> tiles, const std::vector<std::pair<int32_t, int32_t>>& edges);

  int32_t num_tiles() const { return static_cast<int32_t>(tiles_.size()); }
  int64_t num_edges() const { return static_cast<int64_t>(child_index_.size()); }
  const TileSpec& tile(int32_t i) const { return tiles_[i]; }
  int32_t initial_deps(int32_t i) const { return initial_deps_[i]; }
  const std::vector<int32_t>& roots() const { return roots_; }
  const int32_t* children_begin(int32_t i) const { return child_index_.data() + child_offset_[i]; }
  const int32_t* children_end(int32_t i) const { return child_index_.data() + child_offset_[i + 1]; }

 private:
  std::vector<TileSpec> tiles_;
  std::vector<int32_t> initial_deps_;
  std::vector<int64_t> child_offset_;
  std::vector<int32_t> child_index_;
  std::vector<int32_t> roots_;
};

}  // namespace aspen
