// A POSIX clock's reading in nanoseconds: wall (CLOCK_MONOTONIC) or a thread's CPU time,
// the two the preemption meter and speculative parts compare; the runtime's traces use wall.
#pragma once

#include <cstdint>
#include <ctime>

namespace aspen {

inline int64_t clock_ns(clockid_t clock) {
  timespec t{};
  clock_gettime(clock, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

// Wall time (CLOCK_MONOTONIC): trace events, and how long ago something happened.
inline int64_t wall_ns() { return clock_ns(CLOCK_MONOTONIC); }

}  // namespace aspen
