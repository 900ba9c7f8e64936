"""Failed authentications, counted per client address and per key prefix.

After ``limit`` failures inside ``window_s`` seconds, further requests from that address
(or presenting a key with that prefix) are refused with 429 before any database lookup,
until the oldest failure leaves the window. Counts live in this process: each gateway
replica throttles on its own (a shared store would be needed for a global limit).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

from services.common.caches import process_cache
from services.common.config import get_settings

KEY_PREFIX_CHARS = 12  # "cct_" + 8: identifies a key being guessed without storing it
MAX_TRACKED = 10_000  # identities remembered; the least recently failed are forgotten first


class FailureThrottle:
    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, identity: str, now: float) -> deque[float] | None:
        times = self._failures.get(identity)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, *identities: str) -> float | None:
        """Seconds until these identities may try again, or None if they may now."""
        now = time.monotonic()
        waits = []
        with self._lock:
            for identity in identities:
                times = self._recent(identity, now)
                if times is not None and len(times) >= self.limit:
                    waits.append(times[0] + self.window_s - now)
        return max(waits) if waits else None

    def record_failure(self, *identities: str) -> None:
        now = time.monotonic()
        with self._lock:
            for identity in identities:
                times = self._recent(identity, now)
                if times is None:
                    times = self._failures[identity] = deque()
                times.append(now)
                self._failures.move_to_end(identity)
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)


def identities(client_address: str | None, api_key: str | None) -> tuple[str, ...]:
    """What a failure counts against: the client address and the presented key's prefix."""
    found = [f"addr:{client_address or 'unknown'}"]
    if api_key:
        found.append(f"key:{api_key[:KEY_PREFIX_CHARS]}")
    return tuple(found)


@process_cache
def auth_failures() -> FailureThrottle:
    settings = get_settings()
    return FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_s)
