"""The slim gateway image (docker/app.Dockerfile, target ``gateway``) installs only the base
dependencies of pyproject.toml: the gateway process must neither import the pipeline's heavy
packages at start nor need anything outside that list, not even in a function body."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "services"
# What the slim image leaves out (module names), and the distributions behind them.
HEAVY_MODULES = ("torch", "xgboost", "sklearn", "scipy", "imblearn", "captum", "ts", "nibabel")
HEAVY_DISTRIBUTIONS = {"torch", "xgboost", "scikit-learn", "scipy", "torchserve", "captum"}
# The code the gateway image runs: the API process, its uploads room, the shared floor, the
# webhooks worker (httpx only) and the composition roots.
GATEWAY_CODE = (
    *sorted((SERVICES / "gateway").rglob("*.py")),
    *sorted((SERVICES / "upload").rglob("*.py")),
    *sorted((SERVICES / "common").rglob("*.py")),
    *sorted((SERVICES / "webhooks").rglob("*.py")),
    SERVICES / "asgi.py",
    SERVICES / "celery.py",
)


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install here, with their own requirements."""
    environment = {**default_environment(), "extra": ""}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        key = (_normalized(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for line in importlib.metadata.requires(requirement.name) or []:
            child = Requirement(line)
            # A requirement of an extra counts only when that extra was asked for.
            wanted = [{**environment, "extra": e} for e in ("", *requirement.extras)]
            if child.marker is None or any(child.marker.evaluate(env) for env in wanted):
                todo.append(child)
    return {name for name, _extras in seen}


def _third_party_imports(paths: tuple[Path, ...]) -> dict[str, set[str]]:
    """Top-level module name -> the files importing it (every import statement)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "services" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_the_base_dependencies_leave_the_pipeline_out() -> None:
    base = _closure(_pyproject()["dependencies"])
    assert base & HEAVY_DISTRIBUTIONS == set()
    worker = _pyproject()["optional-dependencies"]["worker"]
    assert {_normalized(Requirement(r).name) for r in worker} >= {"torch", "xgboost"}


def test_gateway_code_imports_only_base_dependencies() -> None:
    base = _closure(_pyproject()["dependencies"])
    distributions = importlib.metadata.packages_distributions()
    outside = {
        module: sorted(files)
        for module, files in _third_party_imports(GATEWAY_CODE).items()
        if not {_normalized(d) for d in distributions.get(module, [module])} & base
    }
    assert outside == {}, "imported by gateway code, not in pyproject's base dependencies"


def test_gateway_app_starts_without_heavy_modules(tmp_path: Path) -> None:
    """The process the gateway image runs: the CLI, the ASGI app built, the Celery client."""
    script = (
        "import json, sys\n"
        "import services.cli.main, services.celery\n"
        "from services.asgi import create_app\n"
        "create_app()\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")},
        "COVIDCT_VAR_DIR": str(tmp_path / "var"),
        "COVIDCT_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_a_pipeline_command_without_the_pipeline_packages_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the gateway image ``covidct diagnose`` stops with one line, not a traceback."""
    import services.cli.main
    from services.cli import entry

    def missing_torch() -> None:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(services.cli.main, "app", missing_torch)
    with pytest.raises(SystemExit) as stopped:
        entry.run()
    assert stopped.value.code == 2
    assert "covidct-app image" in capsys.readouterr().err


def test_pipeline_modules_cover_the_worker_extra() -> None:
    """entry.PIPELINE_MODULES names every top-level module the [worker] extra installs."""
    from services.cli.entry import PIPELINE_MODULES

    distributions = importlib.metadata.packages_distributions()
    worker = {
        _normalized(Requirement(r).name) for r in _pyproject()["optional-dependencies"]["worker"]
    }
    modules = {
        module
        for module, names in distributions.items()
        if {_normalized(n) for n in names} & worker and not module.startswith("_")
    }
    assert modules <= PIPELINE_MODULES
