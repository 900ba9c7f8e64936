"""End to end through real processes: Debian's dcmtk ``storescu`` pushes the COVID-CT-MD
series P002 by DICOM C-STORE to ``covidct dicom-listen``, beside the embedded stack (gateway,
worker, broker). A first, aborted association (half the series) leaves nothing; the whole
series then becomes one job that reaches the same verdict as ``covidct diagnose`` of the
same files (the tus path's own end-to-end test compares with the same floor)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.components import require
from harness.stacks import create_tenant, running_stack, wait_for
from services.cli.client import ApiClient, zip_directory
from services.cli.runtime import Stack, free_port
from services.common.config import Settings
from services.diagnosis import Diagnosis, diagnose_path

pytestmark = pytest.mark.data

JOB_TIMEOUT_S = 900
STABLE_AGE_S = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require(shutil.which("storescu") is not None, "dcmtk (storescu)")
    settings = Settings(var_dir=tmp_path_factory.mktemp("embedded"))
    settings.database_url = settings.broker_url = settings.scorer_url = None
    with running_stack(settings) as running:
        yield running


@pytest.fixture(scope="module")
def floor(covid_series: Path, tmp_path_factory: pytest.TempPathFactory) -> Diagnosis:
    result, _prepared = diagnose_path(zip_directory(covid_series, tmp_path_factory.mktemp("z")))
    return result


def storescu(port: int, files: list[Path], *extra: str) -> subprocess.CompletedProcess[str]:
    # P002's files have an empty SOP Instance UID (COVID-CT-MD as published), which no DICOM
    # sender can send (dcmtk refuses it, and a PACS would not have stored it): storescu
    # gives each a new one, as a PACS that imported the files would have. Inventing UIDs
    # also invents the series UID, and a new one after every n images (100 by default):
    # +IR 1000 keeps the 133 slices one series. -xs proposes their JPEG Lossless transfer
    # syntax: the pixel data travel as stored.
    return subprocess.run(
        ["storescu", "+IR", "1000", "-xs", "-aet", "PACS1", "-aec", "COVIDCT", *extra,
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_p002_by_c_store_becomes_one_job_with_the_same_verdict(
    stack: Stack, covid_series: Path, floor: Diagnosis
) -> None:
    tenant = create_tenant(stack, f"hospital-{os.urandom(4).hex()}")
    port = free_port()
    env = {
        **stack.env,
        "COVIDCT_DICOM_AE_TITLES": f'{{"PACS1": "{tenant["name"]}"}}',
        "COVIDCT_DICOM_STABLE_AGE_S": str(STABLE_AGE_S),
    }
    listener = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dicom-listen", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        echo = ["echoscu", "-aet", "PACS1", "-aec", "COVIDCT", "127.0.0.1", str(port)]
        wait_for(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 60, 0.2)
        client = ApiClient(stack.url, tenant["api_key"])
        files = sorted(covid_series.glob("*.dcm"))
        assert len(files) == 133

        aborted = storescu(port, files[: len(files) // 2], "--abort")
        assert aborted.returncode == 0, aborted.stderr
        time.sleep(STABLE_AGE_S * 2)
        assert client.http.get("/v1/jobs").json()["total"] == 0  # no job from half a series

        sent = storescu(port, files)
        assert sent.returncode == 0, sent.stderr
        # quiet time, then 133 instances zipped and stored: slow on 2 busy cores
        jobs = wait_for(lambda: client.http.get("/v1/jobs").json()["items"], 240, 0.5)
        assert len(jobs) == 1
        final = client.wait(jobs[0]["id"], timeout_s=JOB_TIMEOUT_S)
    finally:
        listener.terminate()
        listener.wait(timeout=30)
    assert final["status"] == "succeeded", final
    result = final["result"]
    assert result["label"] == floor.label == "COVID"
    assert result["findings"]["category"] == "covid"
    for name, p in floor.probabilities.items():
        assert result["probabilities"][name] == pytest.approx(p, abs=1e-4)
    assert (result["slices_total"], result["slices_used"]) == (
        floor.slices_total,
        floor.slices_used,
    )
    time.sleep(STABLE_AGE_S * 2)
    assert client.http.get("/v1/jobs").json()["total"] == 1  # and no second job
