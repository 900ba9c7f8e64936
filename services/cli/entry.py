"""The ``covidct`` executable: settings are checked before any module that reads them is
imported, so a misconfigured process stops with one line per bad setting (exit 2), never a
traceback that would echo the offending value (a password) into the logs."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from services.common.config import Settings, get_settings


def configuration_errors(error: ValidationError) -> list[str]:
    """One line per bad setting, named as the operator sets it (COVIDCT_...), no values."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]).upper() if problem["loc"] else "SETTINGS"
        lines.append(f"{prefix}{name}: {str(problem['msg']).removeprefix('Value error, ')}")
    return lines


def run() -> None:
    try:
        get_settings()
    except ValidationError as error:
        for line in configuration_errors(error):
            print(f"configuration error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    from services.cli.main import app

    app()
