"""`make demo` builds the web console when Node.js is there, and the demo prints a console URL
only while the service behind it runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from services.cli.demo import keep_serving
from services.common.config import REPO_ROOT


def _prerequisites(target: str) -> list[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:([^\n]*)$", text, flags=re.MULTILINE)
    assert match, f"no {target} target"
    return match.group(1).split()


def test_demo_target_builds_the_console() -> None:
    assert "$(CONSOLE_STAMP)" in _prerequisites("demo")
    assert "$(CONSOLE_STAMP)" in _prerequisites("install")


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_demo_would_run_the_console_build(tmp_path: Path) -> None:
    """Dry run with every stamp missing: the console build (npm ci, npm run build) is part of
    what `make demo` does."""
    out = subprocess.run(
        ["make", "-n", "-B", "demo", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "npm run build" in out.stdout
    assert out.stdout.index("npm run build") < out.stdout.index("services.cli.demo")


def test_console_url_is_offered_only_when_it_can_stay_live(tmp_path: Path) -> None:
    built = tmp_path / "dist"
    built.mkdir()
    assert not keep_serving(built, interactive=True)  # not built: no URL
    (built / "index.html").write_text("<!doctype html>")
    assert keep_serving(built, interactive=True)
    assert not keep_serving(built, interactive=False)  # nobody to press Ctrl-C: stop at once


def _node_engines() -> list[tuple[str, str]]:
    """(package name, its engines.node) of every locked package (nested copies too)."""
    lock = json.loads((REPO_ROOT / "console" / "package-lock.json").read_text())
    return [
        (path.rsplit("node_modules/", 1)[-1], str(meta["engines"]["node"]))
        for path, meta in lock["packages"].items()
        if path and isinstance(meta.get("engines"), dict) and "node" in meta["engines"]
    ]


def test_readme_node_version_matches_the_lockfile_engines() -> None:
    """The README's minimum Node.js 20 release is the highest any locked package asks of the
    20 line, and every package that excludes Node 20 is named there (npm warns for them)."""
    readme = (REPO_ROOT / "README.md").read_text()
    needed_minor = 0
    not_on_20 = []
    for name, spec in _node_engines():
        ranges = [r.strip() for r in spec.split("||")]
        on_20 = [r for r in ranges if re.match(r"^(\^|~)?20(\.|$)", r) or _lower_bound(r) <= 20]
        if not on_20:
            not_on_20.append(name)
            continue
        for r in on_20:
            found = re.match(r"^\^20\.(\d+)", r)
            if found:
                needed_minor = max(needed_minor, int(found.group(1)))
    assert f"Node.js 20.{needed_minor} or later" in readme
    for name in not_on_20:
        assert f"`{name}`" in readme, f"{name} needs Node 22+ and the README does not say so"


def _lower_bound(spec: str) -> int:
    """Major version a '>=' range starts at (99 for anything else that is not 20)."""
    found = re.match(r"^>=?\s*v?(\d+)", spec)
    return int(found.group(1)) if found else 99
