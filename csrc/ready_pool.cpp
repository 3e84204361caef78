#include "ready_pool.h"

namespace aspen {

ReadyPool::ReadyPool(int max_rows) : max_rows_(max_rows), rows_(new Row[max_rows]) {}

void ReadyPool::note_row_used(int row) {
  int seen = rows_used_.load();
  while (seen < row + 1 && !rows_used_.compare_exchange_weak(seen, row + 1)) {
  }
}

void ReadyPool::push(int row, ReadyTile item, bool root) {
  {
    std::lock_guard<std::mutex> lock(rows_[row].mu);
    std::deque<ReadyTile>& items = item.urgent ? rows_[row].urgent : rows_[row].normal;
    if (root) {
      items.push_front(item);
    } else {
      items.push_back(item);
    }
  }
  if (item.urgent) urgent_size_.fetch_add(1, std::memory_order_relaxed);
  // seq_cst pairs with wait_for_work: either this load sees the sleeper's
  // increment, or the sleeper's load of size_ sees this increment. So a DSE
  // never sleeps while an item it could take is in the pool.
  size_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(sleep_mu_);
    sleep_cv_.notify_one();
  }
}

bool ReadyPool::take(Row& row, bool urgent, bool newest, ReadyTile* out) {
  std::lock_guard<std::mutex> lock(row.mu);
  std::deque<ReadyTile>& items = urgent ? row.urgent : row.normal;
  if (items.empty()) return false;
  if (newest) {
    *out = items.back();
    items.pop_back();
  } else {
    *out = items.front();
    items.pop_front();
  }
  return true;
}

bool ReadyPool::try_pop_level(int row, bool urgent, ReadyTile* out) {
  if (take(rows_[row], urgent, /*newest=*/true, out)) return true;
  const int used = rows_used_.load(std::memory_order_acquire);
  for (int i = 1; i < used; ++i) {
    if (take(rows_[(row + i) % used], urgent, /*newest=*/false, out)) return true;
  }
  return false;
}

bool ReadyPool::try_pop(int row, ReadyTile* out) {
  if (size_.load(std::memory_order_relaxed) == 0) return false;
  if (urgent_size_.load(std::memory_order_relaxed) > 0 && try_pop_level(row, /*urgent=*/true, out)) {
    urgent_size_.fetch_sub(1, std::memory_order_relaxed);
    size_.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }
  const bool found = try_pop_level(row, /*urgent=*/false, out);
  if (found) size_.fetch_sub(1, std::memory_order_relaxed);
  return found;
}

void ReadyPool::signal_work() {
  // seq_cst as in push: either this load sees a sleeper, or the sleeper's load of
  // signals_ sees the increment.
  signals_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) wake_all();
}

void ReadyPool::wait_for_work(const std::atomic<bool>& stop, uint64_t seen_signals) {
  std::unique_lock<std::mutex> lock(sleep_mu_);
  sleepers_.fetch_add(1, std::memory_order_seq_cst);
  sleep_cv_.wait(lock, [&] {
    return stop.load() || size_.load(std::memory_order_seq_cst) > 0 ||
           signals_.load(std::memory_order_seq_cst) != seen_signals;
  });
  sleepers_.fetch_sub(1, std::memory_order_seq_cst);
}

void ReadyPool::wake_all() {
  std::lock_guard<std::mutex> lock(sleep_mu_);
  sleep_cv_.notify_all();
}

}  // namespace aspen
