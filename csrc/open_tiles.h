// The board of open tiles: one slot per DSE, holding the tile whose row parts that DSE
// lets other DSEs take while it runs them itself. The owner claims parts from the front,
// helpers from the back, so the owner keeps reading its rows in order.
#pragma once

#include "ready_pool.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

namespace aspen {

class OpenTiles {
 public:
  explicit OpenTiles(int max_dses);

  // Opens `tile` (its request's parts counter already set) with all `parts` unclaimed in
  // DSE `owner`'s slot; the slot must be closed.
  void open(int owner, const ReadyTile& tile, int32_t parts);
  // The owner's next part, or -1 once every part is claimed (the slot is then closed).
  int32_t claim_front(int owner);
  // A part from the back of an open tile in one of the first `slots` slots but `helper`'s
  // own; false when none is open.
  bool claim_back(int helper, int slots, ReadyTile* out);

 private:
  struct alignas(64) Slot {
    std::mutex mu;
    // A hint read without the lock, so helpers skip closed slots cheaply; the fields
    // below are only read and written under `mu`.
    std::atomic<bool> has_unclaimed{false};
    ReadyTile tile{nullptr, -1, false};
    int32_t front = 0;  // unclaimed parts are [front, back)
    int32_t back = 0;
  };

  std::unique_ptr<Slot[]> slots_;
};

}  // namespace aspen
