"""An httpx transport that connects only to addresses vetted by the callback policy, within
one total deadline.

DNS rebinding: the policy resolves the host once (``common.urls.vet_callback_url``); this
transport then connects to those addresses and never resolves again, while the request keeps
the URL's host for the Host header and for TLS (SNI and certificate checks), so https still
verifies the name. A connection to any other host than the vetted one is refused.

Deadline: httpx timeouts bound each socket operation; a receiver dripping a byte at a time
would pass them forever. Every connect, TLS handshake, read and write here gets at most the
time left before the deadline, so an attempt ends by then whatever the receiver does.
"""

from __future__ import annotations

import ssl
import time
import typing

import httpcore
import httpx

from services.common.urls import CallbackTarget, IPAddress


def _remaining(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("callback deadline exceeded")
    return left if timeout is None else min(timeout, left)


def _past(deadline: float, exc: Exception) -> Exception:
    """A timeout that hit the deadline says so; any other stays as it was."""
    if time.monotonic() >= deadline:
        return type(exc)("callback deadline exceeded")
    return exc


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        left = _remaining(self._deadline, timeout, httpcore.ReadTimeout)
        try:
            return self._stream.read(max_bytes, left)
        except httpcore.ReadTimeout as exc:
            raise _past(self._deadline, exc) from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        left = _remaining(self._deadline, timeout, httpcore.WriteTimeout)
        try:
            self._stream.write(buffer, left)
        except httpcore.WriteTimeout as exc:
            raise _past(self._deadline, exc) from None

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _remaining(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, left), self._deadline
        )

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    def __init__(self, host: str, addresses: list[IPAddress], deadline: float) -> None:
        self._host = host
        self._addresses = addresses
        self._deadline = deadline
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if host.lower() != self._host:
            raise httpcore.ConnectError(f"refused: {host} is not the vetted host {self._host}")
        error: Exception | None = None
        for address in self._addresses:
            try:
                stream = self._backend.connect_tcp(
                    str(address),
                    port,
                    _remaining(self._deadline, timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        assert error is not None  # the policy never vets an empty list
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("refused: callbacks never use unix sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def ssl_context() -> ssl.SSLContext:
    """Certificates verified against the system's CAs (tests put their own CA here)."""
    return httpx.create_ssl_context(trust_env=False)


class PinnedTransport(httpx.HTTPTransport):
    """One callback attempt's transport: no proxies from the environment, no retries, one
    connection, to ``addresses`` only."""

    def __init__(self, target: CallbackTarget, addresses: list[IPAddress], deadline: float) -> None:
        context = ssl_context()
        super().__init__(verify=context, trust_env=False, retries=0)
        # httpx.HTTPTransport takes no network backend; its pool is replaced by one that uses
        # ours (what httpx passes for a direct connection, HTTP/1.1, one connection).
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=1,
            http1=True,
            http2=False,
            network_backend=_PinnedBackend(target.host, addresses, deadline),
        )
