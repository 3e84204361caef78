// A POSIX clock's reading in nanoseconds: wall (CLOCK_MONOTONIC) or a thread's CPU time,
// the two the preemption meter and speculative parts compare.
#pragma once

#include <cstdint>
#include <ctime>

namespace aspen {

inline int64_t clock_ns(clockid_t clock) {
  timespec t{};
  clock_gettime(clock, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

}  // namespace aspen
