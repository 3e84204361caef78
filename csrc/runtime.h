// The Runtime owns the DSE threads and the ready pool. It knows nothing about
// DNNs: it runs Requests of any Program, and DSEs can be added or removed
// while requests are in flight.
#pragma once

#include "open_tiles.h"
#include "preemption_meter.h"
#include "ready_pool.h"
#include "request.h"
#include "speculative_parts.h"

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace aspen {

// One executed tile, recorded while tracing is on.
struct TraceEvent {
  std::shared_ptr<const Program> program;
  int32_t tile;
  int32_t part;  // -1: the whole tile
  int32_t dse;
  int64_t start_ns;  // wall_ns() (clock_ns.h)
  int64_t end_ns;
};

// When a DSE runs a tile that has row parts part by part, letting idle DSEs take parts.
enum class TileSharing : int32_t {
  kWhenPreempted = 0,  // while the DSE loses time to other threads on its core (the default)
  kAlways = 1,
  kNever = 2,
  // For tests: every tile with parts opens, every part runs speculatively and idle DSEs take
  // parts over at once, so commits and take-overs race as often as possible.
  kAlwaysWithBackups = 3,
};

class Runtime {
 public:
  static constexpr int kMaxDses = 256;

  explicit Runtime(int num_dses);
  ~Runtime();  // joins the DSEs: never in a process fork() copied it into (owned_by_this_process)
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Starts or retires DSEs; a retired DSE finishes its current tile and leaves.
  void set_num_dses(int num_dses);
  int num_dses() const;

  // Pins DSE i, present and future, to cpus[i % cpus.size()]; an empty list lets every
  // DSE run on any CPU its creator could (the CPUs of the thread that built the Runtime).
  void set_dse_cpus(const std::vector<int>& cpus);
  std::vector<int> dse_cpus() const;

  // Queues the program's root tiles; the caller waits on the returned Request.
  // Tiles of an urgent request are taken before any other ready tile.
  std::shared_ptr<Request> submit(std::shared_ptr<const Program> program, bool urgent = false);

  // What each DSE did since the runtime started.
  struct DseCounts {
    int64_t tiles_run;     // tiles it finished (the last part, for a tile run in parts)
    int64_t tiles_opened;  // tiles it ran in parts while letting others take some
    int64_t parts_taken;   // parts it took from other DSEs' open tiles
    int64_t parts_taken_over;  // parts it ran for a DSE that was descheduled running them
  };
  std::vector<DseCounts> dse_counts() const;

  void set_tile_sharing(TileSharing sharing) { sharing_.store(sharing, std::memory_order_relaxed); }
  TileSharing tile_sharing() const { return sharing_.load(std::memory_order_relaxed); }

  // Tracing costs one relaxed load per tile while off.
  void start_trace();
  std::vector<TraceEvent> stop_trace();

  // False in a child that fork() copied this Runtime into: the DSE threads were not copied,
  // and a mutex a DSE held at the fork stays locked, so there every method but this one
  // raises, and the Runtime must not be destroyed (its threads cannot be joined).
  bool owned_by_this_process() const;

 private:
  void check_owned_by_this_process() const;
  struct alignas(64) TraceBuffer {
    std::mutex mu;  // uncontended: only its DSE appends; stop_trace drains
    std::vector<TraceEvent> events;
  };

  struct alignas(64) Counters {  // one cache line per DSE: each DSE bumps its own
    std::atomic<int64_t> tiles_run{0};
    std::atomic<int64_t> tiles_opened{0};
    std::atomic<int64_t> parts_taken{0};
    std::atomic<int64_t> parts_taken_over{0};
  };

  struct Dse {
    std::thread thread;
    std::atomic<bool> stop{false};
    // Only this DSE's thread uses these; other DSEs read its CPU clock (set as it starts)
    // through the speculative part it records.
    PreemptionMeter meter;
    clockid_t cpu_clock = CLOCK_THREAD_CPUTIME_ID;
  };

  void dse_main(int index, Dse* self);
  // Polls the pool and the open tiles for a while, then sleeps; false when nothing came.
  bool find_work(int index, Dse* self, ReadyTile* out);
  // Whether idle DSEs poll past kSpinBeforeSleep (runtime.cpp).
  bool keep_polling() const;
  // Applies dse_cpus_ to DSE `index`; false if the OS refused. The caller holds resize_mu_.
  bool apply_cpus(int index);
  // Runs one tile, or one part of an open tile, and releases the children of the tile it
  // finished; returns a child to run next, or nullptr request.
  ReadyTile execute_and_release(int index, Dse* self, ReadyTile item);
  // Runs the tile's parts from the front while idle DSEs take them from the back.
  ReadyTile run_open_tile(int index, Dse* self, const ReadyTile& item);
  // Whether the default sharing mode sees `self` losing its core to other threads.
  bool losing_core(const Dse* self) const;
  // Runs part `piece.part` of `tile`, speculatively while this DSE is losing its core;
  // false if another DSE took the part over, after which neither the request nor the tile
  // may be touched.
  bool run_part(int index, Dse* self, const ReadyTile& piece, const TileSpec& tile);
  bool run_speculative_part(int index, Dse* self, const ReadyTile& piece, const TileSpec& tile);
  // Runs `spec` (the tile or one of its parts) unless the request failed, between two
  // samples of `meter` if given. Any error fails the request.
  void run_kernel(int index, const ReadyTile& item, const TileSpec& spec, PreemptionMeter* meter);
  void record_trace(int index, std::shared_ptr<const Program> program, const ReadyTile& item, int64_t start_ns);
  // What a speculative part that lost its race to a take-over still holds when it is done:
  // views of its buffers and, while tracing, its program, either of which may outlive the
  // request and so be the last reference to tensors Python created. Dropping such a tensor
  // takes the GIL, which a DSE must never wait for (the thread that deletes the runtime
  // holds it while joining the DSEs), so a DSE keeps them here and callers drop them.
  struct LostPart {
    TileSpec spec;
    at::Tensor out;
    std::shared_ptr<const Program> program;
  };
  void keep_lost_part(LostPart part);
  void drop_lost_parts();  // by submit() and the destructor, never a DSE
  // Releases the finished tile's children and counts it done.
  ReadyTile complete_tile(int index, const ReadyTile& item);

  ReadyPool pool_;
  OpenTiles open_tiles_;
  SpeculativeParts speculative_;
  std::atomic<TileSharing> sharing_{TileSharing::kWhenPreempted};
  std::unique_ptr<Counters[]> counts_;
  mutable std::mutex resize_mu_;
  std::vector<std::unique_ptr<Dse>> dses_;  // guarded by resize_mu_
  std::vector<int> dse_cpus_;               // guarded by resize_mu_
  const std::vector<int> creator_cpus_;
  std::atomic<uint32_t> next_root_row_{0};
  std::atomic<int64_t> requests_in_flight_{0};       // submitted, not yet done
  std::atomic<int64_t> last_preempted_open_ns_{-1};  // when a DSE last opened a tile for being preempted
  std::atomic<bool> tracing_{false};
  std::unique_ptr<TraceBuffer[]> traces_;
  std::mutex lost_mu_;
  std::vector<LostPart> lost_parts_;  // guarded by lost_mu_
  const pid_t owner_pid_;
};

}  // namespace aspen
