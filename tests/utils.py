"""Helpers shared by the tests: polling for a condition a user would wait for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.2
) -> T:
    """Call `probe` until it returns a truthy value; return it, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
