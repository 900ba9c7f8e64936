"""The web console, tested in a real browser: Vitest unit tests, then Playwright in Debian's
headless Chromium against a `covidct up` stack on a free port (console/e2e/console.spec.ts).

Chromium, Node.js or the built console missing: a skip, a failure with CI=true (`make
install` builds the console; `.ci/run` installs Chromium). Screenshots of the job list and
the job page go to var/test-artifacts/console/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.components import require
from harness.stacks import create_tenant, running_stack
from services.cli.client import zip_directory
from services.cli.runtime import Stack
from services.common.config import REPO_ROOT, Settings
from services.diagnosis import diagnose_path

pytestmark = pytest.mark.data

CONSOLE = REPO_ROOT / "console"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "console"
VITEST_TIMEOUT_S = 120
PLAYWRIGHT_TIMEOUT_S = 900


def _require_console() -> str:
    node = shutil.which("node")
    require(node is not None, "Node.js (node on PATH)")
    require(CHROMIUM.is_file(), f"Chromium at {CHROMIUM} (apt-get install chromium)")
    require(
        (CONSOLE / "node_modules").is_dir() and (CONSOLE / "dist" / "index.html").is_file(),
        "the built console (make install: npm ci && npm run build in console/)",
    )
    return str(node)


def _run(command: list[str], env: dict[str, str], timeout_s: int) -> None:
    try:
        done = subprocess.run(
            command, cwd=CONSOLE, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"{' '.join(command)} ran past {timeout_s}s:\n{out[-8000:]}")
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {done.returncode}:\n"
            f"{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
        )
    print(done.stdout[-4000:])


def _node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    env["CHROMIUM_PATH"] = str(CHROMIUM)
    env.pop("CI", None)  # Playwright's CI mode changes retries and reporters
    return env


def test_console_unit_tests() -> None:
    node = _require_console()
    _run([node, "node_modules/vitest/vitest.mjs", "run"], _node_env(), VITEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require_console()
    settings = Settings(var_dir=tmp_path_factory.mktemp("console-stack"))
    settings.database_url = settings.broker_url = settings.scorer_url = None
    with running_stack(settings) as stack:
        yield stack


def test_console_in_chromium(console_stack: Stack, covid_series: Path, tmp_path: Path) -> None:
    node = _require_console()
    study = zip_directory(covid_series, tmp_path)
    floor, _prepared = diagnose_path(study)  # `covidct diagnose` of the same file
    alice = create_tenant(console_stack, "console-alice")
    bob = create_tenant(console_stack, "console-bob")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = _node_env()
    env.update(
        CONSOLE_URL=console_stack.url,
        KEY_A=alice["api_key"],
        KEY_B=bob["api_key"],
        STUDY_ZIP=str(study),
        STUDY_DIR=str(covid_series),
        EXPECTED_LABEL=floor.label,
        EXPECTED_P_COVID=repr(floor.probabilities["COVID"]),
        EXPECTED_PATTERN=str((floor.findings or {}).get("pattern", "")),
        EXPECTED_CATEGORY=str((floor.findings or {}).get("category", "")),
        ARTIFACT_DIR=str(ARTIFACTS),
    )
    _run([node, "node_modules/@playwright/test/cli.js", "test"], env, PLAYWRIGHT_TIMEOUT_S)
    assert (ARTIFACTS / "job-list.png").is_file() and (ARTIFACTS / "job-page.png").is_file()
