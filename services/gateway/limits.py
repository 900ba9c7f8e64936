"""Back-pressure: a bounded number of requests in flight per class of route.

Requests under a limited prefix (the jobs API, tus uploads) take a slot before anything
else runs and give it back when their response has been sent. A request that finds no free
slot within ``gateway_queue_timeout_s`` gets a 503 with ``Retry-After`` at once instead of
queueing behind the threadpool and the connection pool; everything else (``/healthz``,
``/readyz``, ``/metrics``, docs) is never limited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.errors import problem, retry_after

IN_FLIGHT = Gauge("covidct_gateway_in_flight", "Requests holding a slot", ["route_class"])
REJECTED = Counter(
    "covidct_gateway_rejected_total", "Requests answered 503 for lack of a slot", ["route_class"]
)


@dataclass
class RouteClass:
    """Requests whose path is ``prefix`` or below it share ``capacity`` slots."""

    name: str
    prefix: str
    capacity: int
    _slots: anyio.Semaphore | None = field(default=None, init=False, repr=False)

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    @property
    def slots(self) -> anyio.Semaphore:
        # Made on first use, inside the server's event loop.
        if self._slots is None:
            self._slots = anyio.Semaphore(self.capacity)
        return self._slots


class InFlightLimit:
    """Pure ASGI middleware (no extra task or thread per request)."""

    def __init__(
        self,
        app: ASGIApp,
        classes: Sequence[RouteClass],
        queue_timeout_s: float,
        retry_after_s: int,
    ) -> None:
        for route_class in classes:
            if route_class.capacity < 1:
                raise ValueError(f"{route_class.name}: capacity must be at least 1")
        self.app = app
        self.classes = list(classes)
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route_class = None
        if scope["type"] == "http":
            path = scope["path"]
            route_class = next((c for c in self.classes if c.matches(path)), None)
        if route_class is None:
            await self.app(scope, receive, send)
            return
        slots = route_class.slots
        acquired = False
        with anyio.move_on_after(self.queue_timeout_s):
            await slots.acquire()
            acquired = True
        if not acquired:
            REJECTED.labels(route_class.name).inc()
            response = problem(
                503, "busy", f"the gateway is at capacity; retry in {self.retry_after_s} s"
            )
            response.headers.update(retry_after(self.retry_after_s))
            await response(scope, receive, send)
            return
        IN_FLIGHT.labels(route_class.name).inc()
        try:
            await self.app(scope, receive, send)
        finally:
            IN_FLIGHT.labels(route_class.name).dec()
            slots.release()
