// Row parts of a tile, which different DSEs may run. A DSE that is being preempted opens its
// tile (open_tiles.h) so that idle DSEs take parts of it instead of waiting for the whole.
#pragma once

#include "tile_spec.h"

namespace aspen {

// Whether a kind's kernel computes each output row from the same rows of its split inputs
// (and whole unsplit ones), so that its parts together equal the whole.
bool kind_splits_by_rows(TileKind kind);

// Raises on a caller's mistake in a tile's parts or split dims.
void check_tile_parts(const TileSpec& t);

// The tile restricted to part `part` of its `parts` (a plain tile of one part).
TileSpec tile_part(const TileSpec& t, int32_t part);

}  // namespace aspen
