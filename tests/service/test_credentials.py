"""Credentials at rest and their rotation: API keys (hash only, two active during a change)
and webhook secrets (encrypted, both signatures while two are active, key rotation)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from services.asgi import create_app
from services.cli.main import app as cli
from services.cli.runtime import free_port, gateway_command
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import ApiKey, Tenant, WebhookSecret
from services.common.secretbox import SecretKeyError, decrypt
from services.common.tenants import (
    LastActive,
    TooManyActive,
    add_api_key,
    add_webhook_secret,
    reencrypt_webhook_secrets,
    retire_old_webhook_secrets,
    revoke_api_key,
    webhook_secrets,
)
from services.webhooks.delivery import deliver_webhook, signed_request, verify
from tests.service.test_gateway_load import _wait_healthy
from tests.support.service import auth, callback_receiver, finished_job_with_callback, make_tenant


@pytest.fixture
def client(isolated_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app()) as test_client:
        yield test_client


def test_nothing_secret_is_stored_in_clear(
    client: TestClient, isolated_settings: Callable[..., Settings]
) -> None:
    alice = make_tenant("alice")
    settings = isolated_settings(broker_url="redis://127.0.0.1:1/0")
    raw = Path(settings.sqlalchemy_url.removeprefix("sqlite:///")).read_bytes()
    assert alice["api_key"].encode() not in raw
    assert alice["webhook_secret"].encode() not in raw
    assert alice["webhook_secret"].removeprefix("whsec_").encode() not in raw
    with session_scope() as session:
        row = session.scalar(select(WebhookSecret).where(WebhookSecret.tenant_id == alice["id"]))
        assert row is not None
        assert decrypt(settings, row.secret_encrypted) == alice["webhook_secret"]
    key_file = settings.var_dir / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_api_key_rotation_without_downtime(client: TestClient) -> None:
    alice = make_tenant("alice")
    old = {"api_key": alice["api_key"]}
    with session_scope() as session:
        tenant = session.get(Tenant, alice["id"])
        assert tenant is not None
        new_key = add_api_key(session, tenant)
    new = {"api_key": new_key}
    # Both work during the change.
    assert client.get("/v1/jobs", headers=auth(old)).status_code == 200
    assert client.get("/v1/jobs", headers=auth(new)).status_code == 200
    with session_scope() as session:
        tenant = session.get(Tenant, alice["id"])
        assert tenant is not None
        with pytest.raises(TooManyActive):
            add_api_key(session, tenant)  # never a third
        assert revoke_api_key(session, tenant, alice["api_key"][:12]) == 1
    assert client.get("/v1/jobs", headers=auth(old)).status_code == 401
    assert client.get("/v1/jobs", headers=auth(new)).status_code == 200
    with session_scope() as session:
        tenant = session.get(Tenant, alice["id"])
        assert tenant is not None
        with pytest.raises(LastActive):
            revoke_api_key(session, tenant, new_key[:12])
        hashes = session.scalars(select(ApiKey.key_hash).where(ApiKey.tenant_id == tenant.id))
        assert new_key not in set(hashes)


def test_callbacks_carry_both_signatures_while_a_secret_is_rotated(
    isolated_settings: Callable[..., Settings],
) -> None:
    settings = isolated_settings(webhook_max_attempts=1)
    with callback_receiver() as receiver:
        _job_id, delivery_id, old_secret = finished_job_with_callback(receiver.url)
        with session_scope() as session:
            tenant_id = session.scalar(
                select(WebhookSecret.tenant_id).order_by(WebhookSecret.created_at.desc())
            )
            tenant = session.get(Tenant, tenant_id)
            assert tenant is not None
            new_secret = add_webhook_secret(session, settings, tenant)
            with pytest.raises(TooManyActive):
                add_webhook_secret(session, settings, tenant)
        deliver_webhook.apply(args=(delivery_id,))
        callback = receiver.received[0]
        assert len(callback.headers["webhook-signature"].split()) == 2
        assert verify(old_secret, callback.headers, callback.body)
        assert verify(new_secret, callback.headers, callback.body)
        with session_scope() as session:
            tenant = session.get(Tenant, tenant_id)
            assert tenant is not None
            assert retire_old_webhook_secrets(session, tenant) == 1
            assert webhook_secrets(session, settings, tenant_id) == [new_secret]
    body, headers = signed_request([new_secret], "msg", {"type": "x"})
    assert verify(new_secret, headers, body) and not verify(old_secret, headers, body)


def test_encryption_key_rotation(isolated_settings: Callable[..., Settings]) -> None:
    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = isolated_settings(secret_keys=json.dumps([first]))
    alice = make_tenant("alice")
    # New key first, old key still listed: everything still decrypts, then re-encrypt.
    settings = isolated_settings(secret_keys=json.dumps([second, first]))
    with session_scope() as session:
        assert webhook_secrets(session, settings, alice["id"]) == [alice["webhook_secret"]]
        assert reencrypt_webhook_secrets(session, settings) == 1
    # Old key dropped: still readable, because every secret is now under the new key.
    settings = isolated_settings(secret_keys=json.dumps([second]))
    with session_scope() as session:
        assert webhook_secrets(session, settings, alice["id"]) == [alice["webhook_secret"]]
    # A key that never encrypted anything: a clear error, not a wrong secret.
    settings = isolated_settings(secret_keys=json.dumps([Fernet.generate_key().decode()]))
    with session_scope() as session, pytest.raises(SecretKeyError):
        webhook_secrets(session, settings, alice["id"])


def test_tenant_cli_rotates_keys(isolated_settings: Callable[..., Settings]) -> None:
    isolated_settings()
    runner = CliRunner()
    created = runner.invoke(cli, ["tenants", "create", "hospital", "--json"])
    assert created.exit_code == 0, created.output
    old_key = json.loads(created.stdout)["api_key"]
    added = runner.invoke(cli, ["tenants", "add-key", "hospital"])
    assert added.exit_code == 0 and added.stdout.strip().startswith("cct_")
    third = runner.invoke(cli, ["tenants", "add-key", "hospital"])
    assert third.exit_code == 2 and "revoke one first" in third.stderr
    listed = runner.invoke(cli, ["tenants", "list-keys", "hospital"])
    assert listed.stdout.count("active") == 2 and old_key not in listed.stdout
    revoked = runner.invoke(cli, ["tenants", "revoke-key", "hospital", old_key[:12]])
    assert revoked.exit_code == 0 and "revoked 1" in revoked.stdout
    missing = runner.invoke(cli, ["tenants", "add-key", "nobody"])
    assert missing.exit_code == 2 and "tenant_not_found" in missing.stderr
    secret = runner.invoke(cli, ["tenants", "add-webhook-secret", "hospital"])
    assert secret.exit_code == 0 and secret.stdout.startswith("whsec_")
    retired = runner.invoke(cli, ["tenants", "retire-webhook-secrets", "hospital"])
    assert "retired 1" in retired.stdout
    again = runner.invoke(cli, ["tenants", "reencrypt-secrets"])
    assert again.exit_code == 0 and "re-encrypted 2" in again.stdout


def test_migration_moves_existing_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command
    from alembic.config import Config

    from services.common.caches import clear_process_caches
    from services.common.config import REPO_ROOT, get_settings
    from services.common.tenants import tenant_by_api_key

    monkeypatch.setenv("COVIDCT_VAR_DIR", str(tmp_path))
    clear_process_caches()
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0002")
    import hashlib

    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute(
            "INSERT INTO tenants (id, name, api_key_hash, webhook_secret, created_at) "
            "VALUES ('t1', 'old', ?, 'whsec_b2xkc2VjcmV0', '2026-01-01 00:00:00')",
            (hashlib.sha256(b"cct_oldkey").hexdigest(),),
        )
    command.upgrade(config, "head")
    from sqlalchemy.orm import Session

    from services.common.db import make_engine

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            tenant = tenant_by_api_key(session, "cct_oldkey")
            assert tenant is not None and tenant.id == "t1"
            assert webhook_secrets(session, get_settings(), "t1") == ["whsec_b2xkc2VjcmV0"]
    finally:
        engine.dispose()
    command.downgrade(config, "0002")
    with sqlite3.connect(tmp_path / "old.db") as db:
        assert db.execute("SELECT webhook_secret FROM tenants").fetchone() == (
            "whsec_b2xkc2VjcmV0",
        )
    clear_process_caches()


# --- the auth-failure throttle (issue 18.13, 18.14) -----------------------------------------


def wrong_key(prefix: str = "cct_") -> dict[str, str]:
    """A key no tenant has, with a prefix of its own unless one is given."""
    return {"api_key": prefix + secrets.token_urlsafe(32)[: 43 - len(prefix) + 4]}


async def _statuses_from(
    app: Any,
    requests: list[tuple[str, dict[str, str]]],
    path: str = "/v1/jobs",
    method: str = "GET",
) -> list[int]:
    """``method path`` as (client address, headers), one after another, straight to the app."""
    statuses = []
    for address, headers in requests:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            statuses.append((await http.request(method, path, headers=headers)).status_code)
    return statuses


# Defect: 20 failures from one address locked out valid keys from that address, and 20 wrong
# keys sharing a tenant's 12-character key prefix locked that tenant out from everywhere.
def test_failures_are_throttled_never_a_valid_key(
    isolated_settings: Callable[..., Settings],
) -> None:
    isolated_settings(broker_url="redis://127.0.0.1:1/0", auth_failure_limit=20)
    app = create_app()
    victim = make_tenant("victim")
    limit = 20
    # One address fails 21 times: throttled, yet the valid key from it still works.
    guesses = [("192.0.2.1", auth(wrong_key())) for _ in range(limit + 1)]
    statuses = asyncio.run(_statuses_from(app, guesses))
    assert statuses == [401] * limit + [429]
    assert asyncio.run(_statuses_from(app, [("192.0.2.1", auth(victim))])) == [200]
    # Wrong keys with the victim's key prefix from many addresses: the prefix is throttled...
    prefix = victim["api_key"][:12]
    guesses = [(f"198.51.100.{i}", auth(wrong_key(prefix))) for i in range(limit + 1)]
    statuses = asyncio.run(_statuses_from(app, guesses))
    assert statuses == [401] * limit + [429]
    # ... and the victim's valid key still works, from anywhere, on the API and on tus.
    assert asyncio.run(_statuses_from(app, [("203.0.113.9", auth(victim))])) == [200]
    tus = {**auth(victim), "Tus-Resumable": "1.0.0"}
    upload = "/v1/uploads/" + "0" * 32
    assert asyncio.run(_statuses_from(app, [("192.0.2.1", tus)], upload, "HEAD")) == [404]
    wrong = {**tus, **auth(wrong_key())}
    assert asyncio.run(_statuses_from(app, [("192.0.2.1", wrong)], upload, "HEAD")) == [429]


def test_forwarded_for_counts_only_from_trusted_proxies(
    isolated_settings: Callable[..., Settings],
) -> None:
    isolated_settings(broker_url="redis://127.0.0.1:1/0", trusted_proxies='["10.0.0.0/8"]')
    app = create_app()
    # Behind the trusted proxy: each forwarded client is throttled on its own.
    rotating = [("10.1.2.3", {**auth(wrong_key()), "X-Forwarded-For": f"192.0.2.{i}"})
                for i in range(25)]  # fmt: skip
    assert set(asyncio.run(_statuses_from(app, rotating))) == {401}
    one = [("10.1.2.3", {**auth(wrong_key()), "X-Forwarded-For": "192.0.2.200"})] * 21
    assert asyncio.run(_statuses_from(app, one))[-1] == 429
    # From any other peer the header is ignored: the peer is the client.
    spoofed = [("127.0.0.1", {**auth(wrong_key()), "X-Forwarded-For": f"192.0.2.{i}"})
               for i in range(21)]  # fmt: skip
    assert asyncio.run(_statuses_from(app, spoofed))[-1] == 429
    isolated_settings(broker_url="redis://127.0.0.1:1/0", trusted_proxies='["*"]')
    with pytest.raises(ValueError, match="trusted_proxies"):
        create_app()


# Defect: the gateway (uvicorn's default) believed X-Forwarded-For from any loopback peer:
# 300 guesses with a rotating header from 127.0.0.1 were never throttled.
def test_rotating_forwarded_for_from_loopback_is_throttled(
    isolated_settings: Callable[..., Settings],
) -> None:
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    port = free_port()
    env = {
        **os.environ,
        "COVIDCT_LOG_LEVEL": "WARNING",
        "COVIDCT_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    process = subprocess.Popen(gateway_command(port), env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        statuses = []
        with httpx.Client(base_url=url, timeout=10) as http:
            for i in range(25):
                headers = {**auth(wrong_key()), "X-Forwarded-For": f"198.51.100.{i}"}
                statuses.append(http.get("/v1/jobs", headers=headers).status_code)
        assert statuses == [401] * 20 + [429] * 5
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
