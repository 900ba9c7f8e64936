"""Process-wide caches (settings, engines, loaded models) behind one registry.

Everything a process loads once goes through :func:`process_cache`, so a test (or a
configuration reload) resets all of them with one call instead of clearing each by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_registered: list[Any] = []


def process_cache(function: F) -> F:
    """``lru_cache`` whose entries :func:`clear_process_caches` drops."""
    cached = lru_cache(maxsize=4)(function)
    _registered.append(cached)
    return cached  # type: ignore[return-value]


def clear_process_caches() -> None:
    for cached in _registered:
        cached.cache_clear()
