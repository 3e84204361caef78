// The ready pool: one row per DSE holding tiles whose dependencies are met,
// regardless of which program (tenant) they belong to. A DSE pops its own row
// newest-first (depth-first, hot caches) and steals from other rows oldest-first.
// Each row has an urgent queue for tiles of high-priority requests, searched
// (own row, then the others) before any normal queue.
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
  bool urgent = false;  // from a high-priority request
  int32_t part = -1;     // >= 0: only this row part of an open tile (open_tiles.h)
  bool taken_over = false;  // a part taken over from a descheduled DSE (speculative_parts.h)
};

class ReadyPool {
 public:
  explicit ReadyPool(int max_rows);

  // A tile made ready by its parent goes to the back (its DSE takes it next, depth-first);
  // a request's root goes to the front, so work already under way is finished first
  // and new requests cannot starve old ones.
  void push(int row, ReadyTile item, bool root = false);
  // Whether tiles of a high-priority request are waiting (a relaxed hint).
  bool has_urgent() const { return urgent_size_.load(std::memory_order_relaxed) > 0; }
  // Own row first, then the other rows; false when the pool looked empty.
  bool try_pop(int row, ReadyTile* out);
  // Work outside the pool (parts of open tiles) announces itself here, waking sleepers.
  // A DSE reads signals() before it last looks for work and passes the value to
  // wait_for_work, which then returns at once if work was announced since.
  uint64_t signals() const { return signals_.load(std::memory_order_seq_cst); }
  void signal_work();
  // Blocks until an item may be in the pool, work was signalled after `seen_signals` was
  // read, or `stop` is set.
  void wait_for_work(const std::atomic<bool>& stop, uint64_t seen_signals);
  // Wakes every sleeping DSE (when stop flags change or work is signalled).
  void wake_all();
  // Rows at or above this index are scanned by stealers even after their DSE left.
  void note_row_used(int row);
  int max_rows() const { return max_rows_; }
  int rows_used() const { return rows_used_.load(std::memory_order_acquire); }

 private:
  struct alignas(64) Row {
    std::mutex mu;
    std::deque<ReadyTile> urgent;
    std::deque<ReadyTile> normal;
  };

  // newest: take the back (own row), else the front (stealing).
  static bool take(Row& row, bool urgent, bool newest, ReadyTile* out);
  bool try_pop_level(int row, bool urgent, ReadyTile* out);

  const int max_rows_;
  std::unique_ptr<Row[]> rows_;
  std::atomic<int> rows_used_{0};
  std::atomic<int64_t> size_{0};
  std::atomic<int64_t> urgent_size_{0};
  std::atomic<uint64_t> signals_{0};
  std::atomic<int> sleepers_{0};
  std::mutex sleep_mu_;
  std::condition_variable sleep_cv_;
};

}  // namespace aspen
