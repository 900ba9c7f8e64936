"""`make demo` builds the web console when Node.js is there, and the demo prints a console URL
only while the service behind it runs."""

from __future__ import annotations

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
