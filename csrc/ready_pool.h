// The ready pool: one queue per DSE holding tiles whose dependencies are met,
// regardless of which program (tenant) they belong to. A DSE pops its own row
// newest-first (depth-first, hot caches) and steals from other rows oldest-first.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

namespace aspen {

class Request;

struct ReadyTile {
  Request* request;
  int32_t tile;
};

class ReadyPool {
 public:
  explicit ReadyPool(int max_rows);

  void push(int row, ReadyTile item);
  // Own row first, then the other rows; false when the pool looked empty.
  bool try_pop(int row, ReadyTile* out);
  // Blocks until an item may be available or `stop` is set.
  void wait_for_work(const std::atomic<bool>& stop);
  // Wakes every sleeping DSE (used when stop flags change).
  void wake_all();
  // Rows at or above this index are scanned by stealers even after their DSE left.
  void note_row_used(int row);
  int max_rows() const { return max_rows_; }

 private:
  struct alignas(64) Row {
    std::mutex mu;
    std::deque<ReadyTile> items;
  };

  bool pop_back(Row& row, ReadyTile* out);
  bool pop_front(Row& row, ReadyTile* out);

  const int max_rows_;
  std::unique_ptr<Row[]> rows_;
  std::atomic<int> rows_used_{0};
  std::atomic<int64_t> size_{0};
  std::atomic<int> sleepers_{0};
  std::mutex sleep_mu_;
  std::condition_variable sleep_cv_;
};

}  // namespace aspen
