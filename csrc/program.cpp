#include "program.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace aspen {

Program::Program(std::vector<TileSpec> tiles, const std::vector<std::pair<int32_t, int32_t>>& edges)
    : tiles_(std::move(tiles)) {
  const int32_t n = num_tiles();
  initial_deps_.assign(n, 0);
  child_offset_.assign(n + 1, 0);
  for (const auto& [parent, child] : edges) {
    TORCH_CHECK(parent >= 0 && parent < n && child >= 0 && child < n,
                "aspen: edge (", parent, ", ", child, ") names a tile outside [0, ", n, ")");
    TORCH_CHECK(parent != child, "aspen: tile ", parent, " depends on itself");
    ++child_offset_[parent + 1];
    ++initial_deps_[child];
  }
  for (int32_t i = 0; i < n; ++i) child_offset_[i + 1] += child_offset_[i];
  child_index_.resize(edges.size());
  std::vector<int64_t> fill(child_offset_.begin(), child_offset_.end() - 1);
  for (const auto& [parent, child] : edges) child_index_[fill[parent]++] = child;

  for (int32_t i = 0; i < n; ++i)
    if (initial_deps_[i] == 0) roots_.push_back(i);

  // Kahn's algorithm: a cycle would leave tiles that never become ready and hang a request.
  std::vector<int32_t> deps = initial_deps_;
  std::vector<int32_t> frontier = roots_;
  int32_t visited = 0;
  while (!frontier.empty()) {
    const int32_t t = frontier.back();
    frontier.pop_back();
    ++visited;
    for (const int32_t* c = children_begin(t); c != children_end(t); ++c)
      if (--deps[*c] == 0) frontier.push_back(*c);
  }
  TORCH_CHECK(visited == n, "aspen: the tile graph has a cycle (", n - visited, " tiles unreachable)");
}

}  // namespace aspen
