#include "ready_pool.h"

namespace aspen {

ReadyPool::ReadyPool(int max_rows) : max_rows_(max_rows), rows_(new Row[max_rows]) {}

void ReadyPool::note_row_used(int row) {
  int seen = rows_used_.load();
  while (seen < row + 1 && !rows_used_.compare_exchange_weak(seen, row + 1)) {
  }
}

void ReadyPool::push(int row, ReadyTile item) {
  {
    std::lock_guard<std::mutex> lock(rows_[row].mu);
    rows_[row].items.push_back(item);
  }
  // seq_cst pairs with wait_for_work: either this load sees the sleeper's
  // increment, or the sleeper's load of size_ sees this increment. So a DSE
  // never sleeps while an item it could take is in the pool.
  size_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(sleep_mu_);
    sleep_cv_.notify_one();
  }
}

bool ReadyPool::pop_back(Row& row, ReadyTile* out) {
  std::lock_guard<std::mutex> lock(row.mu);
  if (row.items.empty()) return false;
  *out = row.items.back();
  row.items.pop_back();
  return true;
}

bool ReadyPool::pop_front(Row& row, ReadyTile* out) {
  std::lock_guard<std::mutex> lock(row.mu);
  if (row.items.empty()) return false;
  *out = row.items.front();
  row.items.pop_front();
  return true;
}

bool ReadyPool::try_pop(int row, ReadyTile* out) {
  if (size_.load(std::memory_order_relaxed) == 0) return false;
  bool found = pop_back(rows_[row], out);
  const int used = rows_used_.load(std::memory_order_acquire);
  for (int i = 1; !found && i <= used; ++i) {
    const int victim = (row + i) % used;
    if (victim != row) found = pop_front(rows_[victim], out);
  }
  if (found) size_.fetch_sub(1, std::memory_order_relaxed);
  return found;
}

void ReadyPool::wait_for_work(const std::atomic<bool>& stop) {
  std::unique_lock<std::mutex> lock(sleep_mu_);
  sleepers_.fetch_add(1, std::memory_order_seq_cst);
  sleep_cv_.wait(lock, [&] {
    return stop.load() || size_.load(std::memory_order_seq_cst) > 0;
  });
  sleepers_.fetch_sub(1, std::memory_order_seq_cst);
}

void ReadyPool::wake_all() {
  std::lock_guard<std::mutex> lock(sleep_mu_);
  sleep_cv_.notify_all();
}

}  // namespace aspen
