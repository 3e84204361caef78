// A Program is an immutable tile graph: tiles, dependency counts and child
// lists. It holds no run state (a timing hint for waiters and whether to fuse relus
// aside), so one Program can serve many requests and several Programs (tenants) can
// share one Runtime.
#pragma once

#include "tile_spec.h"

#include <atomic>
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

  // How long a request of this program recently took from submit to done (0: none yet), a
  // hint for its waiters (Request::wait), not part of what the program computes.
  int64_t recent_duration_ns() const { return recent_duration_ns_.load(std::memory_order_relaxed); }
  void note_duration_ns(int64_t ns) const {
    // Concurrent waiters may lose each other's update: a hint tolerates it.
    const int64_t old = recent_duration_ns_.load(std::memory_order_relaxed);
    recent_duration_ns_.store(old == 0 ? ns : old + (ns - old) / 4, std::memory_order_relaxed);
  }

  // How its requests' conv tiles apply a relu: fused until one of them lost a NaN, exact
  // from then on, so a program fed NaN does not run every request twice (bindings.cpp).
  ReluFusion relu_fusion() const {
    return lost_nan_.load(std::memory_order_relaxed) ? ReluFusion::kExact : ReluFusion::kFused;
  }
  void note_lost_nan() const { lost_nan_.store(true, std::memory_order_relaxed); }

 private:
  std::vector<TileSpec> tiles_;
  std::vector<int32_t> initial_deps_;
  std::vector<int64_t> child_offset_;
  std::vector<int32_t> child_index_;
  std::vector<int32_t> roots_;
  mutable std::atomic<int64_t> recent_duration_ns_{0};
  mutable std::atomic<bool> lost_nan_{false};
};

}  // namespace aspen
