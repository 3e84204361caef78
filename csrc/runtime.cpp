#include "runtime.h"

#include "clock_ns.h"
#include "cpu_affinity.h"
#include "planned_output.h"
#include "tile_parts.h"

#include <ATen/Parallel.h>
#include <ATen/ops/_softmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

namespace aspen {
namespace {

// Makes ATen (and oneDNN / MKL under it) run single-threaded on this DSE.
// ATen re-reads its process-wide thread count the first time a thread enters
// at::parallel_for, through a thread_local in an inline function: one copy
// per shared library. Both copies (libtorch's and ours) are triggered first,
// so neither later undoes the 1 set here.
void pin_aten_to_one_thread() {
  at::parallel_for(0, 1, 1, [](int64_t, int64_t) {});
  at::_softmax(at::zeros({1, 1}), -1, false);  // softmax's kernel enters libtorch's at::parallel_for
  at::set_num_threads(1);
}

// Which c10 class `error` is, for Request::wait to throw again.
ErrorKind kind_of(const c10::Error& error) {
  if (dynamic_cast<const c10::IndexError*>(&error) != nullptr) return ErrorKind::kIndex;
  if (dynamic_cast<const c10::ValueError*>(&error) != nullptr) return ErrorKind::kValue;
  if (dynamic_cast<const c10::TypeError*>(&error) != nullptr) return ErrorKind::kType;
  if (dynamic_cast<const c10::NotImplementedError*>(&error) != nullptr) return ErrorKind::kNotImplemented;
  return ErrorKind::kRuntime;
}

// What running a tile came to: its error, if any, and whether a fused relu may have turned a
// NaN into 0 (tile_spec.h's run_tile).
struct TileOutcome {
  std::optional<TileError> error;
  bool lost_nan = false;
};

// Runs `spec` between two samples of `meter` if given.
TileOutcome try_run_tile(const TileSpec& spec, int index, ReluFusion relu, PreemptionMeter* meter) {
  if (meter != nullptr) meter->observe();
  TileOutcome outcome;
  try {
    outcome.lost_nan = run_tile(spec, index, relu);
  } catch (const c10::Error& e) {
    outcome.error = TileError{kind_of(e), e.what_without_backtrace()};
  } catch (const std::exception& e) {
    outcome.error = TileError{ErrorKind::kRuntime, e.what()};
  }
  if (meter != nullptr && !outcome.error) meter->observe();
  return outcome;
}

// The error with the tile it came from.
TileError tile_error(const Request& request, int32_t tile, const TileError& error) {
  return {error.kind,
          "aspen: tile " + std::to_string(tile) + " (" + request.program().tile(tile).label + ") failed: " + error.message};
}

// Waits a moment (~1 us) without giving up the core. x86's pause is a GCC builtin there
// only; elsewhere aarch64's yield hint, or nothing but the loop around it.
void pause_briefly() {
  for (int i = 0; i < 64; ++i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
}

// A helper looks at a DSE's CPU clock over at least this much wall time before it decides
// the DSE is descheduled: long enough that a DSE on its core has clearly run, short
// against the 2-5 ms slices another process takes here.
constexpr int64_t kTakeOverWindowNs = 50'000;

}  // namespace

Runtime::Runtime(int num_dses)
    : pool_(kMaxDses),
      open_tiles_(kMaxDses),
      speculative_(kMaxDses),
      counts_(new Counters[kMaxDses]),
      creator_cpus_(current_thread_cpus()),
      traces_(new TraceBuffer[kMaxDses]),
      owner_pid_(getpid()) {
  // Before any DSE runs a kernel that writes through it; from the creating thread, which
  // holds the GIL, so no Python thread allocates while the allocator is swapped.
  install_planned_output_allocator();
  set_num_dses(num_dses);
}

Runtime::~Runtime() {
  set_num_dses(0);
  drop_lost_parts();
}

void Runtime::keep_lost_part(LostPart part) {
  std::lock_guard<std::mutex> lock(lost_mu_);
  lost_parts_.push_back(std::move(part));
}

void Runtime::drop_lost_parts() {
  std::vector<LostPart> lost;
  {
    std::lock_guard<std::mutex> lock(lost_mu_);
    lost.swap(lost_parts_);
  }
}

bool Runtime::owned_by_this_process() const { return getpid() == owner_pid_; }

void Runtime::check_owned_by_this_process() const {
  TORCH_CHECK(owned_by_this_process(), "aspen: this runtime belongs to process ", owner_pid_,
              "; fork() did not copy its DSE threads into this process (", getpid(),
              "): use a runtime made here (aspen_torch's shared runtime makes one on first use)");
}

int Runtime::num_dses() const {
  check_owned_by_this_process();
  std::lock_guard<std::mutex> lock(resize_mu_);
  return static_cast<int>(dses_.size());
}

void Runtime::set_num_dses(int num_dses) {
  check_owned_by_this_process();
  TORCH_CHECK(num_dses >= 0 && num_dses <= kMaxDses, "aspen: num_dses must be in [0, ", kMaxDses,
              "], got ", num_dses);
  std::lock_guard<std::mutex> lock(resize_mu_);
  // at::set_num_threads(1) in a new DSE also stores 1 in ATen's process-wide
  // thread count; the caller's value is put back once the DSEs have started.
  const int caller_threads = at::get_num_threads();
  const int before = static_cast<int>(dses_.size());
  while (static_cast<int>(dses_.size()) < num_dses) {
    auto dse = std::make_unique<Dse>();
    const int index = static_cast<int>(dses_.size());
    pool_.note_row_used(index);
    std::atomic<bool> started{false};
    Dse* raw = dse.get();
    dse->thread = std::thread([this, index, raw, &started] {
      pin_aten_to_one_thread();
      pthread_getcpuclockid(pthread_self(), &raw->cpu_clock);
      started.store(true, std::memory_order_release);
      dse_main(index, raw);
    });
    while (!started.load(std::memory_order_acquire)) std::this_thread::yield();
    dses_.push_back(std::move(dse));
    // The CPUs were checked when set; should the OS refuse one since (a cpuset shrunk),
    // this DSE keeps its creator's CPUs, which is only slower.
    apply_cpus(index);
  }
  if (static_cast<int>(dses_.size()) > before) at::set_num_threads(caller_threads);

  while (static_cast<int>(dses_.size()) > num_dses) {
    std::unique_ptr<Dse> dse = std::move(dses_.back());
    dses_.pop_back();
    dse->stop.store(true);
    pool_.wake_all();
    dse->thread.join();
  }
}

void Runtime::set_dse_cpus(const std::vector<int>& cpus) {
  check_owned_by_this_process();
  std::lock_guard<std::mutex> lock(resize_mu_);
  for (int cpu : cpus) {
    const bool allowed = std::find(creator_cpus_.begin(), creator_cpus_.end(), cpu) != creator_cpus_.end();
    TORCH_CHECK(allowed || creator_cpus_.empty(), "aspen: CPU ", cpu,
                " is not one this process may run on (see os.sched_getaffinity(0))");
  }
  dse_cpus_ = cpus;
  for (int i = 0; i < static_cast<int>(dses_.size()); ++i)
    TORCH_CHECK(apply_cpus(i), "aspen: the OS refused to set the CPUs of DSE ", i);
}

std::vector<int> Runtime::dse_cpus() const {
  check_owned_by_this_process();
  std::lock_guard<std::mutex> lock(resize_mu_);
  return dse_cpus_;
}

bool Runtime::apply_cpus(int index) {
  if (creator_cpus_.empty()) return true;  // no thread affinity on this OS
  const std::vector<int> cpus =
      dse_cpus_.empty() ? creator_cpus_ : std::vector<int>{dse_cpus_[index % dse_cpus_.size()]};
  return set_thread_cpus(dses_[index]->thread, cpus);
}

std::shared_ptr<Request> Runtime::submit(std::shared_ptr<const Program> program, bool urgent) {
  check_owned_by_this_process();
  drop_lost_parts();
  auto request = std::make_shared<Request>(std::move(program), urgent);
  const Program& p = request->program();
  if (p.num_tiles() == 0) {
    request->mark_done();
    return request;
  }
  const int rows = num_dses();
  TORCH_CHECK(rows > 0, "aspen: the runtime has no DSEs; call set_num_dses(n) with n >= 1");
  requests_in_flight_.fetch_add(1, std::memory_order_relaxed);
  // Roots are spread over the rows so every DSE starts with work of its own.
  for (int32_t root : p.roots()) {
    const int row = static_cast<int>(next_root_row_.fetch_add(1, std::memory_order_relaxed) % rows);
    pool_.push(row, ReadyTile{request.get(), root, urgent}, /*root=*/true);
  }
  return request;
}

std::vector<Runtime::DseCounts> Runtime::dse_counts() const {
  const int n = num_dses();  // raises in a forked copy
  std::vector<DseCounts> counts(n);
  for (int i = 0; i < n; ++i) {
    counts[i] = {counts_[i].tiles_run.load(std::memory_order_relaxed),
                 counts_[i].tiles_opened.load(std::memory_order_relaxed),
                 counts_[i].parts_taken.load(std::memory_order_relaxed),
                 counts_[i].parts_taken_over.load(std::memory_order_relaxed)};
  }
  return counts;
}

void Runtime::start_trace() {
  check_owned_by_this_process();
  for (int i = 0; i < kMaxDses; ++i) {
    std::lock_guard<std::mutex> lock(traces_[i].mu);
    traces_[i].events.clear();
  }
  tracing_.store(true, std::memory_order_relaxed);
}

std::vector<TraceEvent> Runtime::stop_trace() {
  check_owned_by_this_process();
  tracing_.store(false, std::memory_order_relaxed);
  std::vector<TraceEvent> all;
  for (int i = 0; i < kMaxDses; ++i) {
    std::lock_guard<std::mutex> lock(traces_[i].mu);
    all.insert(all.end(), std::make_move_iterator(traces_[i].events.begin()),
               std::make_move_iterator(traces_[i].events.end()));
    traces_[i].events.clear();
  }
  return all;
}

void Runtime::record_trace(int index, std::shared_ptr<const Program> program, const ReadyTile& item,
                           int64_t start_ns) {
  TraceEvent event{std::move(program), item.tile, item.part, index, start_ns, wall_ns()};
  std::lock_guard<std::mutex> lock(traces_[index].mu);
  traces_[index].events.push_back(std::move(event));
}

void Runtime::run_kernel(int index, const ReadyTile& item, const TileSpec& spec, PreemptionMeter* meter) {
  Request* request = item.request;
  if (request->failed()) return;
  const bool tracing = tracing_.load(std::memory_order_relaxed);
  const int64_t start = tracing ? wall_ns() : 0;
  const TileOutcome outcome = try_run_tile(spec, index, request->relu_fusion(), meter);
  if (outcome.error) {
    request->fail(tile_error(*request, item.tile, *outcome.error));
    return;
  }
  if (outcome.lost_nan) request->note_lost_nan();
  if (tracing) record_trace(index, request->program_ptr(), item, start);
}

bool Runtime::losing_core(const Dse* self) const {
  return sharing_.load(std::memory_order_relaxed) == TileSharing::kWhenPreempted && self->meter.preempted_recently();
}

bool Runtime::run_part(int index, Dse* self, const ReadyTile& piece, const TileSpec& tile) {
  const bool always = sharing_.load(std::memory_order_relaxed) == TileSharing::kAlwaysWithBackups;
  if (!piece.taken_over && (always || losing_core(self))) return run_speculative_part(index, self, piece, tile);
  run_kernel(index, piece, tile_part(tile, piece.part), &self->meter);
  return true;
}

bool Runtime::run_speculative_part(int index, Dse* self, const ReadyTile& piece, const TileSpec& tile) {
  Request* request = piece.request;
  if (request->failed()) return true;
  TileSpec spec = tile_part(tile, piece.part);
  const at::Tensor out = spec.tensors[0];
  // A kernel reads its output's old values only through operands (a residual it adds to),
  // which stay as they are until the part commits, so scratch gets the same values. The
  // part's views keep its buffers alive should a helper take it over and the request end.
  spec.tensors[0] = at::empty(out.sizes(), out.options().memory_format(out.suggest_memory_format()));
  const bool tracing = tracing_.load(std::memory_order_relaxed);
  std::shared_ptr<const Program> program = tracing ? request->program_ptr() : nullptr;
  // Read before start(): from then on a helper may take the part over and finish the
  // request, which its caller may then free, until commit() says the part is still ours.
  const ReluFusion relu = request->relu_fusion();
  const int64_t start = tracing ? wall_ns() : 0;
  speculative_.start(index, self->cpu_clock, piece);
  TileOutcome outcome = try_run_tile(spec, index, relu, &self->meter);
  if (!speculative_.commit(index)) {
    keep_lost_part(LostPart{std::move(spec), out, std::move(program)});
    return false;
  }
  if (!outcome.error) {
    try {
      out.copy_(spec.tensors[0]);
    } catch (const std::exception& e) {
      outcome.error = TileError{ErrorKind::kRuntime, e.what()};
    }
  }
  if (outcome.error) {
    request->fail(tile_error(*request, piece.tile, *outcome.error));
    return true;
  }
  if (outcome.lost_nan) request->note_lost_nan();
  if (tracing) record_trace(index, std::move(program), piece, start);
  return true;
}

ReadyTile Runtime::complete_tile(int index, const ReadyTile& item) {
  Request* request = item.request;
  const Program& program = request->program();
  if (!request->failed()) counts_[index].tiles_run.fetch_add(1, std::memory_order_relaxed);
  // Depth-first: keep one newly ready child for this DSE, publish the rest.
  ReadyTile next{nullptr, -1, false};
  for (const int32_t* c = program.children_begin(item.tile); c != program.children_end(item.tile); ++c) {
    if (!request->release_dependency(*c)) continue;
    if (next.request == nullptr) {
      next = ReadyTile{request, *c, request->urgent()};
    } else {
      pool_.push(index, ReadyTile{request, *c, request->urgent()});
    }
  }
  // Nothing touches `request` after its last tile finishes: the waiter may free it.
  if (request->finish_tile()) {
    requests_in_flight_.fetch_sub(1, std::memory_order_relaxed);
    request->mark_done();
  }
  return next;
}

ReadyTile Runtime::run_open_tile(int index, Dse* self, const ReadyTile& item) {
  const TileSpec& tile = item.request->program().tile(item.tile);
  item.request->begin_parts(item.tile, tile.parts);
  open_tiles_.open(index, item, tile.parts);
  pool_.signal_work();
  counts_[index].tiles_opened.fetch_add(1, std::memory_order_relaxed);
  ReadyTile next{nullptr, -1, false};
  // Once a part of ours is finished, another DSE may finish the tile and the request may
  // end, so each round touches the tile only while it holds an unfinished part.
  for (int32_t part; (part = open_tiles_.claim_front(index)) >= 0;) {
    ReadyTile piece = item;
    piece.part = part;
    if (run_part(index, self, piece, tile) && item.request->finish_part(item.tile)) next = complete_tile(index, item);
  }
  return next;
}

ReadyTile Runtime::execute_and_release(int index, Dse* self, ReadyTile item) {
  const TileSpec& tile = item.request->program().tile(item.tile);
  if (item.part >= 0) {  // a part taken from another DSE's open tile, or taken over
    (item.taken_over ? counts_[index].parts_taken_over : counts_[index].parts_taken)
        .fetch_add(1, std::memory_order_relaxed);
    if (!run_part(index, self, item, tile) || !item.request->finish_part(item.tile))
      return ReadyTile{nullptr, -1, false};
    return complete_tile(index, ReadyTile{item.request, item.tile, item.urgent});
  }
  if (tile.parts > 1) {
    const TileSharing sharing = sharing_.load(std::memory_order_relaxed);
    // A DSE losing its core opens its tiles even when other work is ready: a whole tile it
    // is descheduled in can only be waited for, an open one's parts can be taken over.
    const bool preempted = losing_core(self);
    if (preempted) last_preempted_open_ns_.store(wall_ns(), std::memory_order_relaxed);
    if (preempted || sharing == TileSharing::kAlways || sharing == TileSharing::kAlwaysWithBackups)
      return run_open_tile(index, self, item);
  }
  // Only tiles that could be opened are timed: the meter needs two clock reads.
  run_kernel(index, item, tile, tile.parts > 1 ? &self->meter : nullptr);
  return complete_tile(index, item);
}

// An idle DSE polls this long before it sleeps. On this project's VM a sleeping DSE took
// up to ~5-6 ms to run again after being woken (its virtual core had been halted; traced on
// ResNet-50 B1: one DSE ran the first 5 ms of every call alone), longer than a whole
// ResNet-50 layer; polling bridges the gaps between a caller's requests and between tiles.
constexpr std::chrono::microseconds kSpinBeforeSleep{2000};

// While a request is in flight and a DSE opened a tile for being preempted this recently,
// idle DSEs poll without a deadline: a DSE descheduled in a whole tile holds the others
// for a slice of another process (2-5 ms here), after which a sleeping DSE would not take
// over its next part for as long again. Quiet, and where no tile has parts (ResNet-50,
// whose DSE on a loaded core did better sleeping: woken, it preempts the other process,
// while polling it waits out its slice), DSEs sleep as before.
constexpr int64_t kInterferenceMemoryNs = 100'000'000;

void Runtime::dse_main(int index, Dse* self) {
  c10::InferenceMode inference_mode;
  ReadyTile item{nullptr, -1, false};
  while (true) {
    if (self->stop.load()) {
      // A retiring DSE hands its continuation back so another DSE runs it.
      if (item.request != nullptr) pool_.push(index, item);
      return;
    }
    // Depth-first continuation, unless a high-priority request is waiting.
    if (item.request != nullptr && !item.urgent && pool_.has_urgent()) {
      pool_.push(index, item);
      item = ReadyTile{nullptr, -1, false};
    }
    if (item.request == nullptr && !find_work(index, self, &item)) continue;
    item = execute_and_release(index, self, item);
  }
}

bool Runtime::keep_polling() const {
  if (requests_in_flight_.load(std::memory_order_relaxed) == 0) return false;
  const int64_t last = last_preempted_open_ns_.load(std::memory_order_relaxed);
  return last >= 0 && wall_ns() - last < kInterferenceMemoryNs;
}

bool Runtime::find_work(int index, Dse* self, ReadyTile* out) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinBeforeSleep;
  for (bool first = true; !self->stop.load(std::memory_order_relaxed); first = false) {
    const uint64_t signals = pool_.signals();
    // Whole tiles first: a part of an open tile is the smaller, costlier piece of work; a
    // part taken over is run twice.
    const int rows = pool_.rows_used();
    const int64_t window =
        sharing_.load(std::memory_order_relaxed) == TileSharing::kAlwaysWithBackups ? 0 : kTakeOverWindowNs;
    if (pool_.try_pop(index, out) || open_tiles_.claim_back(index, rows, out) ||
        speculative_.take_over(index, rows, window, out)) {
      return true;
    }
    if (first) self->meter.forget();
    if (!keep_polling() && std::chrono::steady_clock::now() >= deadline) {
      pool_.wait_for_work(self->stop, signals);
      return false;
    }
    // Quiet, yield rather than pause: a runnable thread on this core (the caller waiting
    // for its result) gets it at once. Losing its core to another process, a DSE that
    // yielded would hand it the rest of its share (BERT-base B1 beside a busy loop: the DSE
    // ran 15-24 ms of a 90 ms call yielding, ~40 ms of 78 pausing); what it is then
    // descheduled in is taken over.
    if (self->meter.preempted_recently()) {
      pause_briefly();
    } else {
      std::this_thread::yield();
    }
  }
  return false;
}

}  // namespace aspen
