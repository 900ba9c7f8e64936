"""Shared fixtures. Tests that need ../shared/data run whenever it exists; with CI=true a
missing data directory is a failure, never a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.config import get_settings

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        if IN_CI:
            pytest.fail(f"CI=true but {what} is missing at {path}")
        pytest.skip(f"{what} not available at {path}")
    return path


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


# One TorchServe per test session, shared by the scorer and end-to-end tests.
from tests.torchserve_support import torchserve_url  # noqa: E402, F401
