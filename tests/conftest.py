"""Shared fixtures. Tests that need ../shared/data or a real component (Java for TorchServe,
PostgreSQL, Redis) run whenever it exists; with CI=true a missing one is a failure, never a
skip."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.components import ComponentMissing
from harness.torchserve import require_java, shipped_model_torchserve
from services.common.caches import clear_process_caches
from services.common.config import Settings, get_settings
from services.common.db import migrate

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        if IN_CI:
            pytest.fail(f"CI=true but {what} is missing at {path}")
        pytest.skip(f"{what} not available at {path}")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """A missing real component skips the test, except with CI=true, where it fails."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI or call.excinfo is None or not call.excinfo.errisinstance(ComponentMissing):
        return
    report.outcome = "skipped"
    report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")


@pytest.fixture
def isolated_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Settings]]:
    """``configure(**overrides)``: settings of a fresh SQLite service under ``tmp_path``.

    Overrides are settings names (``broker_url="memory://"``); every process cache (settings,
    engines, loaded models) is dropped before and after, so nothing leaks between tests.
    """

    def configure(**overrides: Any) -> Settings:
        for name in ("DATABASE_URL", "SCORER_URL", "STORAGE_URL"):
            monkeypatch.delenv(f"COVIDCT_{name}", raising=False)
        monkeypatch.setenv("COVIDCT_VAR_DIR", str(tmp_path))
        for name, value in overrides.items():
            monkeypatch.setenv(f"COVIDCT_{name.upper()}", str(value))
        clear_process_caches()
        settings = get_settings()
        migrate(settings.sqlalchemy_url)
        return settings

    yield configure
    monkeypatch.undo()
    clear_process_caches()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the shared data sets (COVIDCT_DATA_DIR, default ../shared/data)."""
    return _require(get_settings().data_dir, "shared data")


@pytest.fixture(scope="session")
def ctmd_dir(data_dir: Path) -> Path:
    return _require(data_dir / "covid-ct-md", "COVID-CT-MD series")


@pytest.fixture(scope="session")
def covid_series(ctmd_dir: Path) -> Path:
    """The 133-slice JPEG-Lossless COVID series P002."""
    return _require(ctmd_dir / "P002", "COVID-CT-MD P002")


@pytest.fixture(scope="session")
def torchserve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Inference URL of one TorchServe (about 10 s to start) serving the shipped slice CNN,
    shared by the scorer and end-to-end tests."""
    require_java()
    with shipped_model_torchserve(tmp_path_factory.mktemp("torchserve")) as url:
        yield url
