#include "cpu_affinity.h"

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

namespace aspen {

#if defined(__linux__)

std::vector<int> current_thread_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (pthread_getaffinity_np(pthread_self(), sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  return cpus;
}

bool set_thread_cpus(std::thread& thread, const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus)
    if (cpu >= 0 && cpu < CPU_SETSIZE) CPU_SET(cpu, &set);
  return pthread_setaffinity_np(thread.native_handle(), sizeof(set), &set) == 0;
}

#else

std::vector<int> current_thread_cpus() { return {}; }

bool set_thread_cpus(std::thread&, const std::vector<int>&) { return true; }

#endif

}  // namespace aspen
