"""Back-pressure: a bounded number of requests in flight per class of route.

Requests under a limited prefix (the jobs API, tus uploads) take a slot before anything
else runs and give it back when their response has been sent. A request that finds no free
slot within ``gateway_queue_timeout_s`` gets a 503 with ``Retry-After`` at once instead of
queueing behind the threadpool and the connection pool; everything else (``/healthz``,
``/readyz``, ``/metrics``, docs) is never limited.

A class may also bound what one client holds (``per_key``, ``per_address``: each counted on
its own; over either: 429 at once, before a shared slot is taken), and
how long its request bodies may stall (``body_timeout_s``: a body that delivers nothing for
that long is ended as if the client had gone, so the route keeps what arrived and answers).
Together they keep a few clients trickling bytes from holding every upload slot.
"""

from __future__ import annotations

import hashlib
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.errors import problem, retry_after

IN_FLIGHT = Gauge("covidct_gateway_in_flight", "Requests holding a slot", ["route_class"])
REJECTED = Counter(
    "covidct_gateway_rejected_total", "Requests answered 503 for lack of a slot", ["route_class"]
)
REJECTED_CLIENT = Counter(
    "covidct_gateway_client_rejected_total",
    "Requests answered 429: their client already held its share of slots",
    ["route_class"],
)
BODY_TIMEOUTS = Counter("covidct_gateway_body_timeouts_total", "Request bodies ended for stalling")


@dataclass
class RouteClass:
    """Requests whose path is ``prefix`` or below it share ``capacity`` slots."""

    name: str
    prefix: str
    capacity: int
    per_key: int | None = None  # requests one API key may hold
    per_address: int | None = None  # requests one client address may hold
    body_timeout_s: float | None = None
    _slots: anyio.Semaphore | None = field(default=None, init=False, repr=False)
    _held: Tally[str] = field(default_factory=Tally, init=False, repr=False)

    @contextmanager
    def client_slots(self, scope: Scope) -> Iterator[str | None]:
        """Count this request against its key and its address; yields what is over its
        share (``"key"`` or ``"address"``, counting nothing) or None once counted."""
        clients = [
            (identity, limit)
            for identity, limit in zip(
                _client_identities(scope), (self.per_address, self.per_key), strict=False
            )
            if limit is not None
        ]
        over = next((i for i, limit in clients if self._held[i] >= limit), None)
        if over is not None:
            yield over.partition(":")[0]
            return
        for identity, _ in clients:
            self._held[identity] += 1
        try:
            yield None
        finally:
            for identity, _ in clients:
                self._held[identity] -= 1
                if self._held[identity] <= 0:
                    del self._held[identity]

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
        with route_class.client_slots(scope) as over:
            if over is not None:
                REJECTED_CLIENT.labels(route_class.name).inc()
                response = problem(
                    429, "too_many_requests_in_flight",
                    f"this {'API key' if over == 'key' else 'address'} already has its share "
                    f"of requests in flight under {route_class.prefix}; retry when one ended",
                )  # fmt: skip
                response.headers.update(retry_after(self.retry_after_s))
                await response(scope, receive, send)
                return
            if route_class.body_timeout_s is not None:
                receive = _with_idle_timeout(receive, route_class.body_timeout_s)
            await self._in_slot(route_class, scope, receive, send)

    async def _in_slot(
        self, route_class: RouteClass, scope: Scope, receive: Receive, send: Send
    ) -> None:
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


def _client_identities(scope: Scope) -> tuple[str, ...]:
    """The client address and (a digest of) the presented API key, if any. Counted before
    authentication: an unknown key is simply another client."""
    client = scope.get("client")
    found = [f"addr:{client[0] if client else 'unknown'}"]
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            found.append("key:" + hashlib.sha256(value).hexdigest()[:32])
            break
    return tuple(found)


def _with_idle_timeout(receive: Receive, timeout_s: float) -> Receive:
    """``receive`` that ends the body (an ``http.disconnect``) once the client has sent
    nothing for ``timeout_s``: every route already handles a client that went away."""
    ended = False

    async def receive_or_give_up() -> Any:
        nonlocal ended
        if ended:
            return {"type": "http.disconnect"}
        with anyio.move_on_after(timeout_s):
            return await receive()
        ended = True
        BODY_TIMEOUTS.inc()
        return {"type": "http.disconnect"}

    return receive_or_give_up
