#include "open_tiles.h"

#include <c10/util/Exception.h>

namespace aspen {

OpenTiles::OpenTiles(int max_dses) : slots_(new Slot[max_dses]) {}

void OpenTiles::open(int owner, const ReadyTile& tile, int32_t parts) {
  Slot& slot = slots_[owner];
  std::lock_guard<std::mutex> lock(slot.mu);
  TORCH_INTERNAL_ASSERT(slot.front == slot.back, "aspen: DSE ", owner, " opened a tile before closing its last");
  slot.tile = tile;
  slot.front = 0;
  slot.back = parts;
  slot.has_unclaimed.store(true, std::memory_order_relaxed);
}

int32_t OpenTiles::claim_front(int owner) {
  Slot& slot = slots_[owner];
  std::lock_guard<std::mutex> lock(slot.mu);
  if (slot.front == slot.back) return -1;
  const int32_t part = slot.front++;
  if (slot.front == slot.back) slot.has_unclaimed.store(false, std::memory_order_relaxed);
  return part;
}

bool OpenTiles::claim_back(int helper, int slots, ReadyTile* out) {
  for (int i = 1; i < slots; ++i) {
    Slot& slot = slots_[(helper + i) % slots];
    if (!slot.has_unclaimed.load(std::memory_order_relaxed)) continue;
    std::lock_guard<std::mutex> lock(slot.mu);
    // A claimed part keeps its tile, and so its request, alive until the part finishes:
    // the request completes only after every part of every tile has finished.
    if (slot.front == slot.back) continue;
    *out = slot.tile;
    out->part = --slot.back;
    if (slot.front == slot.back) slot.has_unclaimed.store(false, std::memory_order_relaxed);
    return true;
  }
  return false;
}

}  // namespace aspen
