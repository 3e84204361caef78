// Parts of open tiles run speculatively by DSEs that are losing their core to other
// threads. Such a DSE computes its part into scratch memory and records it here; a DSE
// with nothing else to do that sees the recorded DSE is not on a CPU (its thread's CPU
// clock stands still) takes the part over and runs it straight into the output. Whoever
// commits first owns the part: the runner copies its result out only if no helper took
// the part over, and a runner that lost drops its result and never touches the request
// again (the helper finishes the part, so the tile no longer waits for a descheduled DSE).
#pragma once

#include "ready_pool.h"

#include <atomic>
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>

namespace aspen {

class SpeculativeParts {
 public:
  explicit SpeculativeParts(int max_dses);

  // DSE `runner`, whose thread's CPU clock is `runner_clock`, starts computing `part` (a
  // ReadyTile with part >= 0) into scratch. Only the runner's own thread calls this.
  void start(int runner, clockid_t runner_clock, const ReadyTile& part);
  // Whether the runner keeps its current part; false if a helper took it over. Only the
  // runner's own thread calls this, once per start.
  bool commit(int runner);
  // Takes over a part of one of the first `slots` DSEs but `helper` whose thread ran less
  // than half of the last `min_window_ns` or more of wall time (every part at once when
  // `min_window_ns` is 0). The helper then owns the part: it runs it into the output and
  // finishes it like a part of its own.
  bool take_over(int helper, int slots, int64_t min_window_ns, ReadyTile* out);

 private:
  struct alignas(64) Record {
    std::mutex mu;
    // A hint read without the lock, so helpers skip idle records cheaply; the fields below
    // are only read and written under `mu`.
    std::atomic<bool> running{false};
    ReadyTile part{nullptr, -1, false};
    bool committed = true;  // by the runner or by a helper; true while no part is recorded
    clockid_t clock = CLOCK_MONOTONIC;
    // The runner's thread CPU time at the wall time of the last look (by any helper).
    int64_t probe_wall_ns = 0;
    int64_t probe_cpu_ns = 0;
  };

  std::unique_ptr<Record[]> records_;
};

}  // namespace aspen
