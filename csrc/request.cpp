#include "request.h"

#include <c10/util/Exception.h>

namespace aspen {

Request::Request(std::shared_ptr<const Program> program, bool urgent)
    : program_(std::move(program)),
      urgent_(urgent),
      pending_deps_(new std::atomic<int32_t>[program_->num_tiles()]),
      tiles_left_(program_->num_tiles()) {
  for (int32_t i = 0; i < program_->num_tiles(); ++i)
    pending_deps_[i].store(program_->initial_deps(i), std::memory_order_relaxed);
}

void Request::fail(const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!failed_.load(std::memory_order_relaxed)) error_ = message;
  failed_.store(true, std::memory_order_release);
}

void Request::mark_done() {
  std::lock_guard<std::mutex> lock(mu_);
  done_ = true;
  done_cv_.notify_all();
}

bool Request::done() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

void Request::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return done_; });
  TORCH_CHECK(error_.empty(), error_);
}

}  // namespace aspen
