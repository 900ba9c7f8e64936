"""Real service stacks for end-to-end tests: worker and gateway processes over either
SQLite + embedded Redis, or PostgreSQL + Redis (+ TorchServe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, text

from harness.components import require
from services.cli.runtime import Stack, free_port, start_stack, wait_ready
from services.cli.runtime import wait_up as wait_up  # for tests running `covidct up` themselves
from services.common.config import Settings
from services.common.db import make_engine

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"


def postgres_available() -> bool:
    try:
        engine = make_engine(POSTGRES_ADMIN_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping())
    except Exception:
        return False


@contextmanager
def fresh_postgres_database(name: str) -> Iterator[str]:
    """A new database named ``name`` plus this process's id, dropped afterwards: two test
    runs on one PostgreSQL (two checkouts, two CI jobs) never drop each other's database
    mid-run (a fixed name did: ``relation "tenants" does not exist`` as 500s)."""
    require(postgres_available(), "PostgreSQL on 127.0.0.1:5432")
    name = f"{name}_{os.getpid()}"
    admin = make_engine(POSTGRES_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fresh_redis_db(index: int) -> str:
    import redis

    require(redis_available(), "Redis on 127.0.0.1:6379")
    url = f"{REDIS_URL}/{index}"
    redis.Redis.from_url(url).flushdb()
    return url


@contextmanager
def running_stack(settings: Settings, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    stack = start_stack(settings, port=free_port(), concurrency=2, extra_env=extra_env)
    try:
        wait_ready(stack.url, timeout_s=180, broker_url=stack.broker_url)
        yield stack
    finally:
        stack.stop()


def create_tenant(stack: Stack, name: str) -> dict[str, str]:
    """Through the CLI, as an admin would (`covidct tenants create NAME --json`)."""
    output = subprocess.run(
        [sys.executable, "-m", "services.cli", "tenants", "create", name, "--json"],
        env=stack.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def stack_engine(stack: Stack) -> Engine:
    return make_engine(stack.env["COVIDCT_DATABASE_URL"])


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(text(sql), params).all())


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s}s")
