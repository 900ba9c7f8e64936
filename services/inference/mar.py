"""Pack a shipped slice-CNN version into a TorchServe model archive (.mar).

Eager mode (TorchScript is deprecated in torch 2.13): ``model.py`` as the model file,
``member-0.pt`` as the serialized file, the other members and ``config.json`` as extra files,
and a generated ``model-config.yaml`` that turns on server-side batching.

The archive's handler is a two-line shim that imports :mod:`services.inference.handler`, so
TorchServe runs exactly the code the in-process scorer runs. The price: **the Python that runs
TorchServe's workers must have this repository installed** with its pipeline
(``pip install -e '.[worker,torchserve]'``, as ``make install`` does in ``.venv``).
TorchServe 0.12 starts workers with the interpreter that ran the ``torchserve`` launcher:
``ts/model_server.py`` passes ``--python sys.executable`` to the Java frontend, which
overrides any ``python=`` line in ``config.properties`` (a per-model venv is only used with
``useVenv: true``, which we do not set). So start TorchServe with ``.venv/bin/torchserve``
(or ``.venv/bin/python -m ts.model_server``), never a ``torchserve`` from another
environment. If the package is missing, the shim fails with a message saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from services.common.config import REPO_ROOT

DEFAULT_MAR_DIR = REPO_ROOT / "build" / "model-store"
HANDLER_MODULE = "covidct_slice_handler"

SHIM_SOURCE = '''"""TorchServe entry point: the installed covidct handler (one code path)."""

try:
    from services.inference.handler import handle
except ImportError as exc:
    # Re-raised as RuntimeError: on an ImportError TorchServe would silently try its
    # built-in handlers instead and report a misleading "module not found".
    raise RuntimeError(
        "the covidct package is not importable by the Python running this TorchServe worker; "
        "start TorchServe with the .venv/bin/torchserve of an environment that has the "
        "repository installed (pip install -e '.[worker,torchserve]')"
    ) from exc

__all__ = ["handle"]
'''


def model_config(
    batch_size: int, max_batch_delay_ms: int, response_timeout_s: int
) -> dict[str, int]:
    """TorchServe per-model settings packed into the archive."""
    return {
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": batch_size,
        "maxBatchDelay": max_batch_delay_ms,
        "responseTimeout": response_timeout_s,
    }


def build_mar(
    model_dir: Path,
    out_dir: Path = DEFAULT_MAR_DIR,
    model_name: str = "slice-cnn",
    batch_size: int = 8,
    max_batch_delay_ms: int = 50,
    response_timeout_s: int = 300,
) -> Path:
    """Write ``<out_dir>/<model_name>.mar`` from ``models/slice-cnn/<version>``; return its path.

    ``batch_size`` counts requests, not slices: TorchServe merges up to that many concurrent
    ``/predictions`` calls (each carrying ``scorer_batch_size`` slices) into one handler call.
    ``response_timeout_s`` is generous because a full batch is scored on CPU.
    """
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    members = [model_dir / name for name in config["members"]]
    missing = [str(path) for path in members if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"model members missing: {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="covidct-mar-") as scratch_name:
        scratch = Path(scratch_name)
        shim = scratch / f"{HANDLER_MODULE}.py"
        shim.write_text(SHIM_SOURCE)
        config_file = scratch / "model-config.yaml"
        config_file.write_text(
            yaml.safe_dump(model_config(batch_size, max_batch_delay_ms, response_timeout_s))
        )
        extra_files = [*members[1:], model_dir / "config.json"]
        command = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name",
            model_name,
            "--version",
            str(config["version"]),
            "--model-file",
            str(REPO_ROOT / "services" / "inference" / "model.py"),
            "--serialized-file",
            str(members[0]),
            "--extra-files",
            ",".join(str(path) for path in extra_files),
            "--handler",
            str(shim),
            "--config-file",
            str(config_file),
            "--export-path",
            str(out_dir),
            "--force",
        ]
        # The archiver stages files in $TMPDIR/<model_name>: a private TMPDIR keeps two
        # concurrent builds (parallel tests, CI jobs) from overwriting each other.
        staging = scratch / "staging"
        staging.mkdir()
        env = {**os.environ, "TMPDIR": str(staging)}
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"torch-model-archiver failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
    mar = out_dir / f"{model_name}.mar"
    if not mar.is_file():
        raise RuntimeError(f"torch-model-archiver reported success but {mar} is missing")
    return mar
