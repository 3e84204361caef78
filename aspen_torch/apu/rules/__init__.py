"""APU lowering rules by op family; importing this package fills apu.registry.RULES."""
from . import attention, conv_pool, elementwise, generic, indexing, layout, matmul, norm  # noqa: F401
