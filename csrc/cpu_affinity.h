// Which CPUs a thread may run on. DSEs are pinned one per CPU so the OS cannot
// stack two of them on one core while another process holds the other: measured on
// ResNet-50 B1 with 2 DSEs and a competing single-threaded process, unpinned DSEs ran
// at about one core's speed, pinned ones used the share of the loaded core too.
#pragma once

#include <thread>
#include <vector>

namespace aspen {

// The CPUs the calling thread may run on (empty where the OS has no such query).
std::vector<int> current_thread_cpus();

// Restricts `thread` to `cpus`; false if the OS refused (e.g. a CPU outside the
// process's cpuset). A no-op returning true where the OS has no thread affinity.
bool set_thread_cpus(std::thread& thread, const std::vector<int>& cpus);

}  // namespace aspen
