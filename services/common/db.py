"""Database engine and sessions (SQLAlchemy 2), one code path for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from services.common.caches import process_cache
from services.common.config import REPO_ROOT, Settings, get_settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the gateway read while a worker writes; busy_timeout waits instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(
    url: str, pool_size: int = 5, max_overflow: int = 10, pool_timeout_s: float = 30.0
) -> Engine:
    """One engine; the pool's size and checkout timeout apply to SQLite files too."""
    pool: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_timeout": pool_timeout_s,
    }
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            pool = {}  # one connection per thread (SingletonThreadPool): no queue to size
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


@process_cache
def _engine_for(url: str) -> Engine:
    settings = get_settings()
    return make_engine(
        url, settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_s
    )


@process_cache
def _sessionmaker_for(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=_engine_for(url), expire_on_commit=False)


def pool_capacity(settings: Settings) -> int:
    """Connections one process's engine may hold at once."""
    return settings.db_pool_size + settings.db_max_overflow


def get_engine() -> Engine:
    return _engine_for(get_settings().sqlalchemy_url)


def get_sessionmaker() -> sessionmaker[Session]:
    return _sessionmaker_for(get_settings().sqlalchemy_url)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# pg_advisory_lock key of `covidct migrate`: gateway pods starting together (each runs the
# migrations in an init container) take turns instead of racing on the same DDL.
MIGRATION_LOCK_KEY = 0x636F7669  # "covi"


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url)
    return config


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision (both SQLite and PostgreSQL)."""
    from alembic import command

    config = _alembic_config(url)
    if not url.startswith("postgresql"):
        command.upgrade(config, "head")
        return
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            # Session-level lock on its own connection: held across Alembic's transaction.
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
            try:
                command.upgrade(config, "head")
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(url: str) -> str | None:
    """The database's revision; None when it has no schema yet (or cannot be reached)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def wait_for_schema(url: str, timeout_s: float, poll_s: float = 2.0) -> bool:
    """Whether the database reached this code's head revision within ``timeout_s``.

    Workers start only on the schema they were built for: their init container waits here
    while the gateway's init container migrates (k8s), instead of crashing on a missing column.
    """
    import time

    head = head_revision()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if current_revision(url) == head:
                return True
        except Exception:  # unreachable or not yet created: keep waiting until the deadline
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
