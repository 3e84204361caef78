#include "speculative_parts.h"

#include "clock_ns.h"

namespace aspen {

SpeculativeParts::SpeculativeParts(int max_dses) : records_(new Record[max_dses]) {}

void SpeculativeParts::start(int runner, clockid_t runner_clock, const ReadyTile& part) {
  Record& r = records_[runner];
  std::lock_guard<std::mutex> lock(r.mu);
  r.part = part;
  r.committed = false;
  r.clock = runner_clock;
  r.probe_wall_ns = wall_ns();
  r.probe_cpu_ns = clock_ns(runner_clock);
  r.running.store(true, std::memory_order_relaxed);
}

bool SpeculativeParts::commit(int runner) {
  Record& r = records_[runner];
  std::lock_guard<std::mutex> lock(r.mu);
  const bool kept = !r.committed;
  r.committed = true;
  r.running.store(false, std::memory_order_relaxed);
  return kept;
}

bool SpeculativeParts::take_over(int helper, int slots, int64_t min_window_ns, ReadyTile* out) {
  for (int i = 1; i < slots; ++i) {
    Record& r = records_[(helper + i) % slots];
    if (!r.running.load(std::memory_order_relaxed)) continue;
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.committed) continue;
    if (min_window_ns > 0) {
      const int64_t wall = wall_ns();
      const int64_t window = wall - r.probe_wall_ns;
      if (window < min_window_ns) continue;
      const int64_t cpu = clock_ns(r.clock);
      const bool descheduled = 2 * (cpu - r.probe_cpu_ns) < window;
      r.probe_wall_ns = wall;
      r.probe_cpu_ns = cpu;
      if (!descheduled) continue;
    }
    // Uncommitted, the part's tile is unfinished, so its request is alive; from here the
    // helper holds the part as the runner did.
    r.committed = true;
    r.running.store(false, std::memory_order_relaxed);
    *out = r.part;
    out->taken_over = true;
    return true;
  }
  return false;
}

}  // namespace aspen
