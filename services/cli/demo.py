"""`make demo`: the embedded service end to end on a sample study.

It runs `covidct up` (SQLite, embedded Redis, a Celery worker, the gateway, the in-process
scorer) in a scratch directory, creates a tenant, submits the sample study through the REST
API with a tus upload, waits for the verdict, prints it beside the study's known diagnosis,
and stops every process. Run from a terminal with the web console built (``make demo`` builds
it when Node.js is there), it first keeps the service running and prints the console's URL
and the demo tenant's key, until Ctrl-C: a URL is printed only while it answers.

The sample is the shared COVID-CT-MD series P002 (COVID, 133 slices, JPEG-Lossless) when
../shared/data is there; otherwise the small derived copy of it shipped in
``demo/covid-ct-md-P002`` (45 slices at 256x256, CC BY 4.0, see demo/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.cli.findings_text import findings_lines
from services.common.config import REPO_ROOT, get_settings

DEMO_STUDY = REPO_ROOT / "demo" / "covid-ct-md-P002"


@dataclass(frozen=True)
class Sample:
    path: Path
    description: str
    known_diagnosis: str


def sample_study() -> Sample:
    series = get_settings().data_dir / "covid-ct-md" / "P002"
    if series.is_dir():
        return Sample(series, "shared COVID-CT-MD series P002 (133 slices)", "COVID")
    known = json.loads((DEMO_STUDY / "diagnosis.json").read_text())
    return Sample(
        DEMO_STUDY,
        f"shipped demo study {DEMO_STUDY.name} ({known['slices']} slices; {known['source']})",
        str(known["diagnosis"]),
    )


def keep_serving(console_dir: Path, interactive: bool) -> bool:
    """Whether the demo keeps the service up after the verdict for the web console: only
    when the console is built and someone at a terminal can stop it with Ctrl-C."""
    return interactive and (console_dir / "index.html").is_file()


def _covidct(*args: str, env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "services.cli", *args], env=env, text=True, **kwargs
    )


def main() -> int:
    from services.cli.runtime import free_port, wait_up

    sample = sample_study()
    path = sample.path
    print(f"sample study: {sample.description}\n  path: {path}")
    with tempfile.TemporaryDirectory(prefix="covidct-demo-") as scratch:
        env = dict(os.environ)
        for name in ("DATABASE_URL", "BROKER_URL", "SCORER_URL", "STORAGE_URL"):
            env.pop(f"COVIDCT_{name}", None)
        env.update(
            COVIDCT_VAR_DIR=str(Path(scratch) / "var"),
            COVIDCT_CLIENT_STATE=str(Path(scratch) / "client.json"),
            COVIDCT_LOG_LEVEL="WARNING",
        )
        port = free_port()
        server = f"http://127.0.0.1:{port}"
        print(f"starting the embedded service: covidct up --port {port}")
        # Its own lines (a console URL among them) are not printed: the demo says what is live.
        up = _covidct(
            "up", "--port", str(port), env=env, start_new_session=False,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_up(server, Path(scratch) / "var", timeout_s=300)
            tenant = subprocess.run(
                [sys.executable, "-m", "services.cli", "tenants", "create", "demo", "--json"],
                env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            api_key = json.loads(tenant.stdout.strip().splitlines()[-1])["api_key"]
            print("submitting through the API (tus upload), waiting for the verdict ...")
            started = time.perf_counter()
            submit = subprocess.run(
                [sys.executable, "-m", "services.cli", "submit", str(path),
                 "--server", server, "--api-key", api_key, "--wait", "--json"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            if submit.returncode not in (0, 1):
                print(submit.stderr.strip().splitlines()[-1] if submit.stderr else "submit failed")
                return 2
            job = json.loads(submit.stdout)
            elapsed = time.perf_counter() - started
            status = print_job(job, elapsed, sample)
            # A terminal on both ends: someone reads the URL and can press Ctrl-C.
            interactive = sys.stdin.isatty() and sys.stdout.isatty()
            if status == 0 and keep_serving(get_settings().console_dir, interactive):
                print(f"web console: {server}/ (API key {api_key}); the job is in its worklist")
                print("the service keeps running for the console; Ctrl-C stops the demo")
                with contextlib.suppress(KeyboardInterrupt):
                    up.wait()
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
    if status == 0:
        print("the service stopped; `covidct diagnose PATH` gives the same verdict in one process")
    return status


def print_job(job: dict[str, Any], elapsed: float, sample: Sample) -> int:
    """The verdict beside the known diagnosis; 0 when the job succeeded, else 2."""
    print(f"job {job['id']}: {job['status']} in {elapsed:.1f}s")
    if job["status"] != "succeeded":
        print(f"error: {job['error']['code']}: {job['error']['message']}")
        return 2
    result = job["result"]
    probs = ", ".join(f"{k} {v:.3f}" for k, v in result["probabilities"].items())
    print(f"verdict: {result['label']} ({probs}); known diagnosis: {sample.known_diagnosis}")
    print(
        f"slices used {result['slices_used']} of {result['slices_total']}; "
        f"models {result['model_versions']}"
    )
    series = result.get("series") or {}
    if series.get("series_instance_uid"):
        print(
            f"series read: {series.get('series_description') or '(no description)'} "
            f"{series['series_instance_uid']}, {series.get('instances')} instances "
            f"({series.get('reason')})"
        )
    for line in findings_lines(result.get("findings")):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
