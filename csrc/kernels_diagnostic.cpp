// Tiles that compute nothing of a model: they let tests observe the runtime
// (execution order, which DSE ran what, ATen's threading inside a DSE).
#include "kernels.h"

#include <ATen/Parallel.h>

#include <atomic>

namespace aspen {

void run_record(const TileSpec& t, int dse_index) {
  int64_t* log = t.tensors[0].data_ptr<int64_t>();
  const int64_t capacity = (t.tensors[0].numel() - 1) / 2;
  // log[0] is the fill count; the fetch_add hands each tile its own slot.
  const int64_t slot = __atomic_fetch_add(&log[0], 1, __ATOMIC_RELAXED);
  TORCH_CHECK(slot < capacity, "aspen: record log overflow");
  log[1 + 2 * slot] = t.ints[0];
  log[2 + 2 * slot] = dse_index;
}

void run_thread_probe(const TileSpec& t) {
  std::atomic<int64_t> max_thread{0};
  at::parallel_for(0, 1 << 16, 1, [&](int64_t, int64_t) {
    int64_t id = at::get_thread_num();
    int64_t seen = max_thread.load();
    while (id > seen && !max_thread.compare_exchange_weak(seen, id)) {
    }
  });
  int64_t* out = t.tensors[0].data_ptr<int64_t>();
  out[0] = max_thread.load() + 1;
  out[1] = at::get_num_threads();
}

}  // namespace aspen
