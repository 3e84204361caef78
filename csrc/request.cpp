#include "request.h"

#include <c10/util/Exception.h>

#include <thread>

namespace aspen {
namespace {

// Requests of programs that recently took at most this long are polled for: a futex
// wake-up costs the waiter ~25 us here, 8% of such a call and more (a 3-layer MLP at batch
// 1: 85 -> 58 us per call; 1024 wide at batch 16: 253 -> 246 us). Longer ones are slept on:
// a waiter polling for their tail shares a core with a DSE.
constexpr std::chrono::microseconds kPolledDurations{300};

}  // namespace

Request::Request(std::shared_ptr<const Program> program, bool urgent)
    : program_(std::move(program)),
      urgent_(urgent),
      relu_fusion_(program_->relu_fusion()),
      pending_deps_(new std::atomic<int32_t>[program_->num_tiles()]),
      tiles_left_(program_->num_tiles()),
      submitted_(std::chrono::steady_clock::now()) {
  for (int32_t i = 0; i < program_->num_tiles(); ++i)
    pending_deps_[i].store(program_->initial_deps(i), std::memory_order_relaxed);
}

void Request::fail(const TileError& error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!failed_.load(std::memory_order_relaxed)) error_ = error;
  failed_.store(true, std::memory_order_release);
}

void Request::mark_done() {
  std::lock_guard<std::mutex> lock(mu_);
  done_.store(true, std::memory_order_release);
  done_cv_.notify_all();
}

void Request::wait() {
  const auto is_done = [this] { return done_.load(std::memory_order_acquire); };
  const std::chrono::nanoseconds expected{program_->recent_duration_ns()};
  if (expected.count() > 0 && expected <= kPolledDurations) {
    // Yield, not pause: a DSE that shares this core gets it at once.
    const auto poll_until = submitted_ + 2 * expected;
    while (!is_done() && std::chrono::steady_clock::now() < poll_until) std::this_thread::yield();
  }
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, is_done);
  program_->note_duration_ns(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - submitted_).count());
  if (!error_) return;
  switch (error_->kind) {
    case ErrorKind::kIndex:
      TORCH_CHECK_INDEX(false, error_->message);
    case ErrorKind::kValue:
      TORCH_CHECK_VALUE(false, error_->message);
    case ErrorKind::kType:
      TORCH_CHECK_TYPE(false, error_->message);
    case ErrorKind::kNotImplemented:
      TORCH_CHECK_NOT_IMPLEMENTED(false, error_->message);
    case ErrorKind::kRuntime:
      break;
  }
  TORCH_CHECK(false, error_->message);
}

}  // namespace aspen
