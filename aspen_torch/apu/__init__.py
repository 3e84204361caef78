"""APU: lowers aten partitions into tile graphs. Importing it registers every rule."""
from . import rules  # noqa: F401  (fills the registry)
from .lower import PartitionInput, RuntimeInput, lower_partition
from .policy import TilePolicy
from .registry import RULES
from .tile_graph import TileGraph

__all__ = ["PartitionInput", "RuntimeInput", "lower_partition", "TilePolicy", "RULES", "TileGraph"]
