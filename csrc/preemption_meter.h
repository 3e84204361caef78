// Whether a DSE is sharing its core with another thread: wall time against the DSE
// thread's CPU time while it had work. A DSE preempted recently opens its tiles to helpers.
#pragma once

#include "clock_ns.h"

#include <cstdint>

namespace aspen {

class PreemptionMeter {
 public:
  // Samples the clocks (the thread's CPU clock costs a system call, ~0.5 us here, so only
  // tiles that could be opened are bracketed); the time since the last sample counts if
  // the DSE had work throughout.
  void observe() {
    const int64_t wall = wall_ns(), cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (has_last_ && (wall - last_wall_ns_) - (cpu - last_cpu_ns_) > kLostNs) {
      previous_loss_ns_ = last_loss_ns_;
      last_loss_ns_ = wall;
    }
    last_wall_ns_ = wall;
    last_cpu_ns_ = cpu;
    has_last_ = true;
  }

  // The DSE ran out of work: an idle DSE yields its core on purpose, so the time until the
  // next sample does not count.
  void forget() { has_last_ = false; }

  // Two losses within the window: a competing process takes the core for a slice every few
  // ms, while the kernel's and the host's own work took a core for more than 0.2 ms about
  // three times a second here (measured with both cores busy). BERT-base B1: one loss in
  // 50 ms opened tiles in 16 of 40 quiet calls; two in 100 ms in 4 of 40 (no measurable
  // cost) and under load matched opening every tile, where two in 30 ms lagged by ~5%.
  bool preempted_recently() const {
    return previous_loss_ns_ >= 0 && wall_ns() - previous_loss_ns_ < kRememberNs;
  }

 private:
  // Interrupts and page faults cost microseconds; another process's time slice 2-5 ms here.
  static constexpr int64_t kLostNs = 300'000;
  static constexpr int64_t kRememberNs = 100'000'000;

  // Only its DSE's thread touches these.
  bool has_last_ = false;
  int64_t last_wall_ns_ = 0;
  int64_t last_cpu_ns_ = 0;
  int64_t last_loss_ns_ = -1;
  int64_t previous_loss_ns_ = -1;
};

}  // namespace aspen
