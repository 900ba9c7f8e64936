"""Issue 19 item 5: a process configured with an invalid key or a template's placeholder
password stops at once with one clear line per setting (exit 2), no traceback, no value."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER_PASSWORD = "change-me-postgres"


def _covidct(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
    clean.update(env, COVIDCT_VAR_DIR=str(tmp_path), PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "tenants", "create", "hospital", "--json"],
        env=clean,
        cwd=tmp_path,  # no .env of the checkout is read
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        # the placeholder of .env.example, unchanged
        ({"COVIDCT_SECRET_KEYS": '["change-me-b64-32-bytes-0000000000000000000="]'}, "SECRET_KEYS"),
        ({"COVIDCT_SECRET_KEYS": '["not-a-fernet-key"]'}, "SECRET_KEYS"),
        (
            {"COVIDCT_DATABASE_URL": f"postgresql+psycopg://covidct:{PLACEHOLDER_PASSWORD}@db/x"},
            "DATABASE_URL",
        ),
        ({"COVIDCT_BROKER_URL": "redis://:CHANGE-ME@redis:6379/0"}, "BROKER_URL"),
    ],
)
def test_cli_refuses_bad_configuration_in_one_line(
    tmp_path: Path, env: dict[str, str], setting: str
) -> None:
    result = _covidct(tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert f"configuration error: COVIDCT_{setting}:" in result.stderr
    assert "Traceback" not in result.stderr
    for value in env.values():  # the offending value (a password, a key) is never echoed
        assert value not in result.stderr


def test_valid_configuration_starts(tmp_path: Path) -> None:
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    result = _covidct(tmp_path, COVIDCT_SECRET_KEYS=f'["{key}"]')
    assert result.returncode == 0, result.stderr


def test_settings_accept_real_keys_and_passwords() -> None:
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    settings = Settings(
        secret_keys=[key, key],  # type: ignore[list-item]  # coerced to SecretStr
        database_url="postgresql+psycopg://covidct:3f9a1c@db/covidct",
    )
    assert len(settings.secret_keys) == 2
    with pytest.raises(ValidationError):
        Settings(secret_keys=["short"])  # type: ignore[list-item]
