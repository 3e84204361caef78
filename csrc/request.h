// One execution of a Program: its dependency counters, completion signal and
// first error. Tiles in the ready pool point at their Request.
#pragma once

#include "program.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace aspen {

// The c10 error class a tile raised; the caller gets the same one, so Python sees the
// exception type eager raises (an embedding index out of range is an IndexError).
enum class ErrorKind { kRuntime, kIndex, kValue, kType, kNotImplemented };

struct TileError {
  ErrorKind kind;
  std::string message;
};

class Request {
 public:
  Request(std::shared_ptr<const Program> program, bool urgent);

  const Program& program() const { return *program_; }
  const std::shared_ptr<const Program>& program_ptr() const { return program_; }
  bool urgent() const { return urgent_; }
  // How its conv tiles apply a relu: fused, unless a request of its program lost a NaN.
  ReluFusion relu_fusion() const { return relu_fusion_; }

  // Returns true when `child` became ready through this decrement.
  bool release_dependency(int32_t child) {
    // acq_rel: the decrement that reaches zero acquires every parent's
    // release, so the child's kernel sees all the data its parents wrote.
    return pending_deps_[child].fetch_sub(1, std::memory_order_acq_rel) == 1;
  }

  // A tile run in row parts counts its unfinished parts in its dependency counter, which
  // reached zero when the tile became ready and is not read again. The count is published
  // to other DSEs by the open-tile slot's lock.
  void begin_parts(int32_t tile, int32_t parts) { pending_deps_[tile].store(parts, std::memory_order_relaxed); }
  // Returns true for the tile's last part; acq_rel as in release_dependency, so the DSE
  // that finishes the tile sees every part's writes before it releases the children.
  bool finish_part(int32_t tile) { return pending_deps_[tile].fetch_sub(1, std::memory_order_acq_rel) == 1; }

  // Called once per tile, executed or skipped; returns true for the last tile.
  bool finish_tile() { return tiles_left_.fetch_sub(1, std::memory_order_acq_rel) == 1; }

  // After a failure the remaining tiles are drained without running kernels,
  // so the request still completes and no queued tile outlives it.
  void fail(const TileError& error);
  bool failed() const { return failed_.load(std::memory_order_acquire); }

  // A fused relu may have turned a NaN into 0: the results may not be eager's. Later
  // requests of the program run their relus exact.
  void note_lost_nan() {
    program_->note_lost_nan();
    lost_nan_.store(true, std::memory_order_relaxed);
  }
  // Read after wait(), whose acquire of done_ orders it after every tile's note.
  bool lost_nan() const { return lost_nan_.load(std::memory_order_relaxed); }

  void mark_done();
  // Blocks until every tile finished; throws the first tile error as its c10 class. Polls (yielding) first
  // if the program's recent requests were short (request.cpp), else sleeps.
  void wait();

 private:
  std::shared_ptr<const Program> program_;
  const bool urgent_;
  const ReluFusion relu_fusion_;
  std::unique_ptr<std::atomic<int32_t>[]> pending_deps_;
  std::atomic<int64_t> tiles_left_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> lost_nan_{false};
  const std::chrono::steady_clock::time_point submitted_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  std::atomic<bool> done_{false};  // set under mu_, so a waiter cannot miss the notify
  std::optional<TileError> error_;
};

}  // namespace aspen
