"""Exceptions raised to users of the aspen backend."""
from __future__ import annotations


class AspenError(RuntimeError):
    """Base class of every error aspen raises on purpose."""


class AspenUnsupportedError(AspenError):
    """Strict mode met ops that aspen cannot tile; lists every one of them at once."""

    def __init__(self, unsupported: list[tuple[str, str, str]]):
        # Each entry: (op name, reason, where in the user's code it came from).
        self.unsupported = unsupported
        lines = [f"aspen (strict): {len(unsupported)} op(s) cannot run on aspen:"]
        for op, reason, where in unsupported:
            lines.append(f"  - {op}: {reason}" + (f"\n      from {where}" if where else ""))
        super().__init__("\n".join(lines))


class AspenInputError(AspenError, ValueError):
    """A call's input does not match what the graph was compiled for."""
