"""Callback URLs cannot reach the service's own network (SSRF): refused at job creation (422)
and again at delivery (rows inserted behind the API's back, names resolving to private
addresses), no redirects followed, answers cut at a size and a deadline. Loopback only."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.asgi import create_app
from services.common import tasks as common_tasks
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import WebhookAttempt, WebhookDelivery
from services.common.urls import (
    CallbackRefused,
    check_callback_url,
    parse_ip_literal,
    vet_callback_url,
)
from services.webhooks import delivery as delivery_module
from services.webhooks import transport as transport_module
from services.webhooks.delivery import deliver_webhook
from tests.support.service import (
    Callback,
    CallbackReceiver,
    auth,
    callback_receiver,
    deliver_until_settled,
    finished_job_with_callback,
    make_tenant,
)

NO_EXCEPTIONS = "[]"  # webhook_allowed_networks as a production deployment sets it

# URL (port filled in for delivery tests) -> the rule the refusal names. With no allowed
# networks every one of these is refused, whatever the receiver behind it.
REFUSED = [
    ("http://127.0.0.1:{port}/v1/jobs", "127.0.0.1 is not a public address (loopback)"),
    ("http://localhost:{port}/hook", "127.0.0.1 is not a public address (loopback)"),
    ("http://169.254.169.254:{port}/latest/meta-data/", "(link-local)"),
    ("http://10.0.0.5:{port}/hook", "10.0.0.5 is not a public address (private)"),
    ("http://172.16.0.1:{port}/hook", "(private)"),
    ("http://192.168.1.1:{port}/hook", "(private)"),
    ("http://0.0.0.0:{port}/hook", "0.0.0.0 is not a public address (unspecified)"),
    ("http://[::]:{port}/hook", ":: is not a public address (unspecified)"),
    ("http://[::1]:{port}/hook", "::1 is not a public address (loopback)"),
    ("http://2130706433:{port}/hook", "127.0.0.1 is not a public address (loopback)"),
    ("http://0x7f.1:{port}/hook", "127.0.0.1 is not a public address (loopback)"),
    ("http://017700000001:{port}/hook", "127.0.0.1 is not a public address (loopback)"),
    ("http://127.1:{port}/hook", "127.0.0.1 is not a public address (loopback)"),
    ("http://[::ffff:127.0.0.1]:{port}/hook", "maps to 127.0.0.1 is not a public address"),
    ("http://[64:ff9b::a00:5]:{port}/hook", "embeds 10.0.0.5 is not a public address"),
    ("http://100.64.0.1:{port}/hook", "100.64.0.1 is not a public address"),
    ("http://user:pass@127.0.0.1:{port}/hook", "must not contain credentials"),
]
# Refused even with the embedded defaults (which allow loopback receivers).
REFUSED_BY_DEFAULT = [
    ("http://169.254.169.254/latest/meta-data/", "(link-local)"),
    ("http://10.0.0.5/hook", "(private)"),
    ("http://0.0.0.0/hook", "(unspecified)"),
    ("https://user:pass@hooks.example/cb", "must not contain credentials"),
    ("https://hooks.example:0/cb", "port 0 is out of range"),
    ("http://[fe80::1]/hook", "(link-local)"),
]


# --- the policy itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "2130706433", "0x7f.1", "0X7F000001", "017700000001", "127.1", "127.0.0.1."],
)
def test_every_spelling_of_loopback_is_an_ip_literal(host: str) -> None:
    literal = parse_ip_literal(host)
    assert literal is not None and str(literal) == "127.0.0.1"


@pytest.mark.parametrize("host", ["hooks.example", "1.example", "0xhost.example"])
def test_names_are_not_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.1", "08.1.1.1", "1..1"])
def test_numeric_hosts_that_are_no_address_are_refused(host: str) -> None:
    with pytest.raises(CallbackRefused, match="not a valid IP address"):
        parse_ip_literal(host)


def test_static_rules() -> None:
    production = Settings(webhook_allow_http=False, webhook_allowed_networks=[])
    embedded = Settings(webhook_allow_http=True, webhook_allowed_networks=["127.0.0.0/8"])
    for url, rule in REFUSED:
        with pytest.raises(CallbackRefused) as refused:
            check_callback_url(url.format(port=8000), Settings(webhook_allowed_networks=[]))
        assert rule in refused.value.reason, url
    with pytest.raises(CallbackRefused, match="must use https"):
        check_callback_url("http://hooks.example/cb", production)
    with pytest.raises(CallbackRefused, match="must use https, not ftp"):
        check_callback_url("ftp://hooks.example/cb", embedded)
    with pytest.raises(CallbackRefused, match="must name a host"):
        check_callback_url("https:///cb", embedded)
    with pytest.raises(CallbackRefused, match="out of range"):
        check_callback_url("https://hooks.example:70000/cb", embedded)
    assert check_callback_url("https://hooks.example/cb", production).port == 443
    assert check_callback_url("https://93.184.216.34/cb", production).address is not None
    assert check_callback_url("http://127.0.0.1:8000/cb", embedded).port == 8000
    allowed = Settings(webhook_allowed_networks=["10.1.0.0/16"])
    assert check_callback_url("http://10.1.2.3/cb", allowed).host == "10.1.2.3"
    with pytest.raises(CallbackRefused, match=r"10\.2\.0\.1 is not a public address"):
        check_callback_url("http://10.2.0.1/cb", allowed)


def test_resolution_must_give_public_addresses_only() -> None:
    settings = Settings(webhook_allowed_networks=[])

    def resolver(*answers: str) -> Callable[[str, int], list[str]]:
        return lambda _host, _port: list(answers)

    target, addresses = vet_callback_url(
        "https://hooks.example/cb", settings, resolver("93.184.216.34", "2606:4700::1111")
    )
    assert target.host == "hooks.example" and [str(a) for a in addresses] == [
        "93.184.216.34",
        "2606:4700::1111",
    ]
    for answers in (["10.0.0.5"], ["93.184.216.34", "10.0.0.5"], ["::ffff:169.254.169.254"]):
        with pytest.raises(CallbackRefused, match="not a public address"):
            vet_callback_url("https://hooks.example/cb", settings, resolver(*answers))
    # A host named in the allow-list may resolve to a private address.
    internal = Settings(webhook_allowed_networks=["hooks.internal"])
    _target, addresses = vet_callback_url(
        "https://hooks.internal/cb", internal, resolver("10.0.0.5")
    )
    assert [str(a) for a in addresses] == ["10.0.0.5"]


# --- at job creation: 422 ---------------------------------------------------------------


@pytest.fixture
def api(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[TestClient, dict[str, str]]]]:
    """``api(**settings)``: an in-process gateway (no broker) and a tenant."""
    monkeypatch.setattr(common_tasks, "dispatch", lambda *_args: None)
    clients: list[TestClient] = []

    def start(**overrides: Any) -> tuple[TestClient, dict[str, str]]:
        isolated_settings(broker_url="redis://127.0.0.1:1/0", **overrides)
        client = TestClient(create_app())
        clients.append(client)
        return client, make_tenant("alice")

    yield start
    for client in clients:
        client.close()


def _create(client: TestClient, tenant: dict[str, str], url: str) -> Any:
    return client.post("/v1/jobs", json={"callback_url": url}, headers=auth(tenant))


@pytest.mark.parametrize(("url", "rule"), REFUSED)
def test_creation_refuses_internal_callbacks(
    api: Callable[..., tuple[TestClient, dict[str, str]]], url: str, rule: str
) -> None:
    client, tenant = api(webhook_allowed_networks=NO_EXCEPTIONS)
    response = _create(client, tenant, url.format(port=8000))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_request"
    assert body["details"][0]["loc"] == ["body", "callback_url"]
    assert rule in body["details"][0]["msg"]


def test_creation_with_the_embedded_defaults(
    api: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, tenant = api()
    for url, rule in REFUSED_BY_DEFAULT:
        response = _create(client, tenant, url)
        assert response.status_code == 422, url
        assert rule in response.json()["details"][0]["msg"], url
    for url in ("http://127.0.0.1:9000/hook", "https://hooks.example/cb"):
        assert _create(client, tenant, url).status_code == 201, url


def test_production_settings_refuse_plain_http(
    api: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, tenant = api(webhook_allow_http="false", webhook_allowed_networks=NO_EXCEPTIONS)
    response = _create(client, tenant, "http://hooks.example/cb")
    assert response.status_code == 422
    assert "must use https" in response.json()["details"][0]["msg"]
    assert _create(client, tenant, "https://hooks.example/cb").status_code == 201


# --- at delivery ------------------------------------------------------------------------


def _delivery_for(callback_url: str) -> str:
    return finished_job_with_callback(callback_url)[1]


def _attempts(delivery_id: str) -> tuple[str, list[tuple[int | None, str | None]]]:
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        rows = session.query(WebhookAttempt).filter_by(delivery_id=delivery_id)
        return delivery.status, [(a.status_code, a.error) for a in rows.order_by("attempt")]


@pytest.fixture
def worker(isolated_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def configure(**overrides: Any) -> Settings:
        defaults = {"webhook_max_attempts": 3, "webhook_backoff_s": 0.01, "webhook_timeout_s": 2}
        return isolated_settings(**{**defaults, **overrides})

    return configure


@pytest.mark.parametrize(("url", "rule"), REFUSED)
def test_delivery_refuses_internal_callbacks(
    worker: Callable[..., Settings], url: str, rule: str
) -> None:
    worker(webhook_allowed_networks=NO_EXCEPTIONS)
    with callback_receiver() as receiver:  # the loopback forms would all reach it
        port = receiver.url.rsplit(":", 1)[1].split("/")[0]
        delivery_id = _delivery_for(url.format(port=port))
        assert deliver_webhook.apply(args=(delivery_id,)).get() == "refused"
        assert receiver.received == []
    status, attempts = _attempts(delivery_id)
    assert status == "failed"
    assert len(attempts) == 1  # refusal is final: no retry
    assert attempts[0][0] is None
    assert attempts[0][1] is not None and attempts[0][1].startswith("refused: ")
    assert rule in attempts[0][1]


def test_credentials_are_refused_at_delivery_with_the_embedded_defaults(
    worker: Callable[..., Settings],
) -> None:
    worker()
    with callback_receiver() as receiver:
        delivery_id = _delivery_for(receiver.url.replace("http://", "http://u:p@"))
        deliver_webhook.apply(args=(delivery_id,))
        assert receiver.received == []
    status, attempts = _attempts(delivery_id)
    assert (status, len(attempts)) == ("failed", 1)
    assert "must not contain credentials" in str(attempts[0][1])


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The resolver delivery uses: host -> addresses, filled in by the test; logs lookups."""
    table: dict[str, list[str]] = {}

    def resolve(host: str, _port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} does not resolve")
        return table[host]

    monkeypatch.setattr(delivery_module, "resolve_host", resolve)
    return table


def test_a_name_resolving_to_a_private_address_is_refused(
    worker: Callable[..., Settings], dns: dict[str, list[str]]
) -> None:
    worker()
    dns["hooks.example"] = ["93.184.216.34", "10.0.0.5"]
    delivery_id = _delivery_for("https://hooks.example/cb")
    assert deliver_webhook.apply(args=(delivery_id,)).get() == "refused"
    assert _attempts(delivery_id) == (
        "failed",
        [(None, "refused: 10.0.0.5 is not a public address (private)")],
    )


def test_a_name_resolving_to_loopback_is_refused_in_production(
    worker: Callable[..., Settings], dns: dict[str, list[str]]
) -> None:
    worker(webhook_allowed_networks=NO_EXCEPTIONS)
    dns["hooks.example"] = ["127.0.0.1"]
    with callback_receiver() as receiver:
        delivery_id = _delivery_for(receiver.url.replace("127.0.0.1", "hooks.example"))
        deliver_webhook.apply(args=(delivery_id,))
        assert receiver.received == []
    status, attempts = _attempts(delivery_id)
    assert (status, len(attempts)) == ("failed", 1)


def test_delivery_connects_to_the_vetted_address_with_the_original_host(
    worker: Callable[..., Settings], dns: dict[str, list[str]]
) -> None:
    """The name is resolved once, by the policy; the connection goes to that address (no
    second lookup to rebind), and the Host header still names the URL's host."""
    worker()
    dns["hooks.example"] = ["127.0.0.1"]
    with callback_receiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "hooks.example")
        delivery_id = _delivery_for(url)
        assert deliver_webhook.apply(args=(delivery_id,)).get() == "delivered"
        assert len(receiver.received) == 1
        port = url.split(":")[2].split("/")[0]
        assert receiver.received[0].headers["Host"] == f"hooks.example:{port}"


def test_a_name_that_does_not_resolve_is_retried(
    worker: Callable[..., Settings], dns: dict[str, list[str]]
) -> None:
    worker()
    delivery_id = _delivery_for("https://nowhere.example/cb")
    assert deliver_until_settled(delivery_id) == "failed"
    status, attempts = _attempts(delivery_id)
    assert (status, len(attempts)) == ("failed", 3)
    assert all(str(error).startswith("DNS: ") for _code, error in attempts)


# --- redirects, size, time --------------------------------------------------------------


@dataclass
class RawReceiver:
    url: str = ""
    posts: int = 0
    bytes_sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)


@contextmanager
def raw_receiver(
    answer: Callable[[BaseHTTPRequestHandler, RawReceiver], None],
) -> Iterator[RawReceiver]:
    """A loopback HTTP server whose POST handler is ``answer``."""
    state = RawReceiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            state.posts += 1
            try:
                answer(self, state)
            except OSError:
                pass  # the client hung up
            finally:
                self.close_connection = True
                state.done.set()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_redirects_are_not_followed(worker: Callable[..., Settings]) -> None:
    worker()
    with callback_receiver() as target:

        def redirect(handler: BaseHTTPRequestHandler, _state: RawReceiver) -> None:
            handler.send_response(302)
            handler.send_header("Location", target.url)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with raw_receiver(redirect) as first:
            delivery_id = _delivery_for(first.url)
            assert deliver_until_settled(delivery_id) == "failed"
            assert first.posts == 3  # each 302 a failed attempt, retried as usual
        assert target.received == []
    status, attempts = _attempts(delivery_id)
    assert status == "failed"
    assert attempts == [(302, "HTTP 302 (redirects are not followed)")] * 3


def test_an_oversize_answer_is_cut(worker: Callable[..., Settings]) -> None:
    worker(webhook_max_response_bytes=1024)
    total, chunk = 256 * 1024**2, b"x" * 65536

    def flood(handler: BaseHTTPRequestHandler, state: RawReceiver) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        while state.bytes_sent < total:
            handler.wfile.write(chunk)
            state.bytes_sent += len(chunk)

    with raw_receiver(flood) as receiver:
        delivery_id = _delivery_for(receiver.url)
        assert deliver_webhook.apply(args=(delivery_id,)).get() == "delivered"
        assert receiver.done.wait(10)
        assert receiver.bytes_sent < total // 4  # stopped by the hang-up, not by the end
    assert _attempts(delivery_id) == ("delivered", [(200, None)])


def test_an_attempt_ends_at_the_deadline_however_slow_the_receiver(
    worker: Callable[..., Settings],
) -> None:
    """A receiver dripping its headers a byte at a time passes every per-read timeout; the
    attempt still ends at ``webhook_timeout_s``."""
    worker(webhook_timeout_s=1, webhook_max_attempts=1)

    def drip(handler: BaseHTTPRequestHandler, _state: RawReceiver) -> None:
        handler.wfile.write(b"HTTP/1.1 204 No Content\r\n")
        for byte in b"X-Slow: " + b"a" * 40:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.1)
        handler.wfile.write(b"\r\n\r\n")

    with raw_receiver(drip) as receiver:
        delivery_id = _delivery_for(receiver.url)
        started = time.monotonic()
        deliver_webhook.apply(args=(delivery_id,))
        elapsed = time.monotonic() - started
    status, attempts = _attempts(delivery_id)
    assert status == "failed"
    assert attempts[0][0] is None and "deadline exceeded" in str(attempts[0][1])
    assert elapsed < 3, elapsed


def test_settings_take_a_json_list_from_the_environment(
    isolated_settings: Callable[..., Settings],
) -> None:
    settings = isolated_settings(webhook_allowed_networks=json.dumps(["10.0.0.0/8", "h.lan"]))
    assert settings.webhook_allowed_networks == ["10.0.0.0/8", "h.lan"]
    assert Settings().webhook_allow_http is True  # the embedded default


@pytest.fixture
def tls_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], CallbackReceiver]]:
    """``start(name)``: an https receiver on 127.0.0.1 whose certificate names ``name``, a
    CA delivery trusts (self-signed, made by the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    servers: list[ThreadingHTTPServer] = []

    def start(name: str) -> CallbackReceiver:
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        trusted = ssl.create_default_context(cafile=str(cert))
        monkeypatch.setattr(transport_module, "ssl_context", lambda: trusted)
        receiver = CallbackReceiver(url="")

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.received.append(Callback(dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        receiver.url = f"https://hooks.example:{server.server_address[1]}/hook"
        return receiver

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_https_to_the_vetted_address_verifies_the_urls_host(
    worker: Callable[..., Settings], dns: dict[str, list[str]], tls_receiver: Any
) -> None:
    """Pinned to 127.0.0.1, the TLS handshake still sends and checks the URL's name."""
    worker(webhook_max_attempts=1)
    dns["hooks.example"] = ["127.0.0.1"]
    receiver = tls_receiver("hooks.example")
    delivery_id = _delivery_for(receiver.url)
    assert deliver_webhook.apply(args=(delivery_id,)).get() == "delivered"
    assert len(receiver.received) == 1
    # A certificate for another name is refused: verification is on.
    impostor = tls_receiver("impostor.example")
    delivery_id = _delivery_for(impostor.url)
    assert deliver_webhook.apply(args=(delivery_id,)).get() == "failed"
    assert impostor.received == []
    assert "CERTIFICATE_VERIFY_FAILED" in str(_attempts(delivery_id)[1][0][1])
