"""Tiny timing helpers: best-of-N wall time, so one slow run does not skew a ratio."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.common.config import get_settings


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def sample_series() -> Path:
    path = get_settings().data_dir / "covid-ct-md" / "P002"
    if not path.is_dir():
        raise SystemExit(f"benchmarks need the shared series at {path}")
    return path


def flush_redis(url: str) -> None:
    """FLUSHDB on a benchmark's own Redis database (queued work nobody will consume)."""
    import redis

    redis.Redis.from_url(url).flushdb()


def report(result: dict[str, float]) -> dict[str, float]:
    for key, value in result.items():
        print(f"{key:40s} {value:10.3f}")
    return result


@contextmanager
def children_output(log: Path) -> Iterator[None]:
    """Processes started inside write their stdout/stderr to ``log``, not to the report."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for handle in (fd, *saved):
            os.close(handle)
