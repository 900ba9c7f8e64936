"""The layout's walls, checked from the import graph (static: every import statement,
including the ones inside functions)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"
# Deployable rooms: each imports only services.common and itself.
ROOMS = ("gateway", "upload", "preprocess", "inference", "ensemble", "webhooks")


def _imports(package: Path) -> dict[str, set[str]]:
    """Module file (relative) -> the ``services.*`` modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(SERVICES.parent))] = {
            n for n in names if n == "services" or n.startswith("services.")
        }
    return found


def _outside(imports: dict[str, set[str]], allowed: tuple[str, ...]) -> dict[str, list[str]]:
    def ok(name: str) -> bool:
        return any(name == a or name.startswith(a + ".") for a in allowed)

    return {
        module: sorted(n for n in names if not ok(n))
        for module, names in imports.items()
        if any(not ok(n) for n in names)
    }


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_imports_only_common_and_itself(room: str) -> None:
    imports = _imports(SERVICES / room)
    assert imports, f"services/{room} has no modules"
    assert _outside(imports, ("services.common", f"services.{room}")) == {}


def test_common_is_a_floor() -> None:
    assert _outside(_imports(SERVICES / "common"), ("services.common",)) == {}


def test_no_room_reaches_into_training_or_the_entry_points() -> None:
    """Training, the CLI and the composition roots sit above the rooms, never below."""
    above = ("services.training", "services.cli", "services.asgi", "services.celery")
    for room in (*ROOMS, "common"):
        for module, names in _imports(SERVICES / room).items():
            assert not [n for n in names if n.startswith(above)], module


def test_the_checker_sees_a_wall_broken() -> None:
    """The check itself can fail: a cross-room import is reported."""
    tree = {"services/gateway/x.py": {"services.common.db", "services.inference.scorer"}}
    outside = _outside(tree, ("services.common", "services.gateway"))
    assert outside == {"services/gateway/x.py": ["services.inference.scorer"]}


def test_the_client_imports_no_server_code() -> None:
    code = (
        "import sys, services.cli.client; "
        "print(sorted(m for m in ('sqlalchemy', 'fastapi', 'celery', 'torch', 'pydantic_settings')"
        " if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
