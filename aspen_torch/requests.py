"""Asynchronous requests: `submit` returns a concurrent.futures.Future, so a server keeps
several requests in flight while its own thread stays free."""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable

import torch

from .runtime import SHARED_RUNTIME

_request_state = threading.local()


def current_request_is_urgent() -> bool:
    """Whether the call running on this thread came from submit(..., priority > 0)."""
    return getattr(_request_state, "urgent", False)


def submit(compiled_model: Callable, *args: Any, priority: int = 0, **kwargs: Any) -> concurrent.futures.Future:
    """Calls `compiled_model(*args, **kwargs)` under torch.no_grad() on a request thread.

    Returns a Future (`.result(timeout)`, `.done()`, `concurrent.futures.wait`,
    `asyncio.wrap_future`). With priority > 0 the request's tiles are taken by the DSEs
    before tiles of normal requests.
    """

    def call() -> Any:
        _request_state.urgent = priority > 0
        try:
            with torch.no_grad():
                return compiled_model(*args, **kwargs)
        finally:
            _request_state.urgent = False

    return SHARED_RUNTIME.request_executor().submit(call)
