"""The C-STORE SCP in-process (SQLite, loopback), spoken to by Debian's dcmtk
(``echoscu``, ``storescu``) with small generated CT series: association policy, per-instance
refusals, one job per series once quiet, and nothing from an aborted association."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from harness.components import require
from services.cli.runtime import free_port
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Job
from services.common.storage import make_storage
from services.common.tenants import tenant_by_name
from services.upload.scp import ConfigurationError, serve, tenants_by_ae_title
from tests.support.dicom_instances import ct_series, mr_instance, part10, short_pixels_instance
from tests.support.service import creation_record, make_tenant

STABLE_AGE_S = 1.0
CALLING = "PACS1"


@pytest.fixture
def dcmtk() -> None:
    require(shutil.which("storescu") is not None, "dcmtk (storescu, echoscu)")


def scp_settings(configure: Callable[..., Settings], **overrides: object) -> Settings:
    tenant_name = "hospital"
    settings = configure(
        broker_url="redis://127.0.0.1:1/0",
        dicom_ae_titles=f'{{"{CALLING}": "{tenant_name}"}}',
        dicom_stable_age_s=STABLE_AGE_S,
        **overrides,
    )
    make_tenant(tenant_name)
    return settings


@pytest.fixture
def settings(isolated_settings: Callable[..., Settings]) -> Settings:
    return scp_settings(isolated_settings)


@contextmanager
def running_scp(settings: Settings, port: int | None = None) -> Iterator[int]:
    port = port or free_port()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, "127.0.0.1", port, stop))
    thread.start()
    deadline = time.monotonic() + 10
    while _echo(port, CALLING).returncode != 0:
        assert time.monotonic() < deadline, "the SCP did not start"
        time.sleep(0.1)
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def scp(settings: Settings, started: list[str], dcmtk: None) -> Iterator[int]:
    with running_scp(settings) as port:
        yield port


def _echo(port: int, calling: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "COVIDCT", "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def storescu(port: int, files: list[Path], *extra: str, calling: str = CALLING) -> str:
    """storescu's exit output (it exits 0 even when an instance is refused: -nh)."""
    done = subprocess.run(
        ["storescu", "-nh", "-v", "-aet", calling, "-aec", "COVIDCT", *extra,
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.stdout + done.stderr


def write(folder: Path, instances: list[bytes], stem: str = "i") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, data in enumerate(instances):
        path = folder / f"{stem}{number:03d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def wait_for_jobs(started: list[str], count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(started) < count:
        assert time.monotonic() < deadline, f"{len(started)} jobs, expected {count}"
        time.sleep(0.1)


def job_members(job_id: str, settings: Settings) -> list[pydicom.Dataset]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.upload_blob
        blob = job.upload_blob
    with zipfile.ZipFile(io.BytesIO(make_storage(settings).get_bytes(blob))) as archive:
        return [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist()]


def test_echo_and_unknown_ae_title_is_rejected(scp: int) -> None:
    assert _echo(scp, CALLING).returncode == 0
    refused = _echo(scp, "STRANGER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def test_series_becomes_one_job_once_quiet_and_bad_instances_are_refused(
    scp: int, settings: Settings, started: list[str], tmp_path: Path
) -> None:
    series = write(tmp_path / "ct", ct_series(4))
    bad = write(tmp_path / "bad", [part10(mr_instance()), part10(short_pixels_instance())], "b")
    log = storescu(scp, [*series, *bad])
    responses = [line for line in log.splitlines() if "Received Store Response" in line]
    assert [r.split("(")[1].rstrip(")") for r in responses] == [
        *["Success"] * 4,
        "Refused: SOPClassNotSupported",
        "Error: CannotUnderstand",
    ], log
    wait_for_jobs(started, 1)
    time.sleep(STABLE_AGE_S * 2)
    assert len(started) == 1  # the refused instances made no job
    members = job_members(started[0], settings)
    sent = {pydicom.dcmread(p).SOPInstanceUID for p in series}
    assert {m.SOPInstanceUID for m in members} == sent
    assert not list((settings.dicom_spool_dir).glob("*/*"))  # the spool is empty again
    with session_scope() as session:  # the job belongs to the calling AE title's tenant
        job = session.get(Job, started[0])
        assert job is not None
        assert job.tenant_id == tenant_by_name(session, "hospital").id
    created_by, events = creation_record(started[0])  # who sent it: the calling AE title
    assert created_by == f"ae:{CALLING}"
    assert [(e["actor"], e["client_address"], e["detail"]) for e in events] == [
        (created_by, "127.0.0.1", {"via": "c-store", "instances": 4})
    ]


def test_aborted_association_keeps_nothing_and_makes_no_job(
    scp: int, settings: Settings, started: list[str], tmp_path: Path
) -> None:
    half = write(tmp_path / "half", ct_series(3))
    log = storescu(scp, half, "--abort")
    assert "Aborting Association" in log or "abort" in log.lower(), log
    time.sleep(STABLE_AGE_S * 3)
    assert started == []
    assert not list(settings.dicom_spool_dir.glob("*/*/*.dcm"))


def test_a_series_sent_in_two_associations_is_one_job(
    scp: int, settings: Settings, started: list[str], tmp_path: Path
) -> None:
    series = write(tmp_path / "ct", ct_series(4))
    storescu(scp, series[:2])
    storescu(scp, series[2:])
    wait_for_jobs(started, 1)
    assert len(job_members(started[0], settings)) == 4


def test_configuration_is_checked_at_start(isolated_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigurationError, match="is empty"):
        tenants_by_ae_title(isolated_settings())
    with pytest.raises(ConfigurationError, match="no tenant"):
        tenants_by_ae_title(isolated_settings(dicom_ae_titles='{"PACS1": "nobody"}'))


def test_dicom_listen_refuses_to_start_without_ae_titles(
    isolated_settings: Callable[..., Settings],
) -> None:
    settings = isolated_settings()
    env = {**os.environ, "COVIDCT_VAR_DIR": str(settings.var_dir), "COVIDCT_LOG_JSON": "false"}
    env.pop("COVIDCT_DICOM_AE_TITLES", None)
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "dicom-listen", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "COVIDCT_DICOM_AE_TITLES is empty" in done.stderr


def test_a_series_over_the_limits_is_refused_further_instances(
    isolated_settings: Callable[..., Settings], started: list[str], dcmtk: None, tmp_path: Path
) -> None:
    settings = scp_settings(isolated_settings, max_archive_members=2)
    series = write(tmp_path / "ct", ct_series(3))
    with running_scp(settings) as port:
        log = storescu(port, series)
        responses = [line for line in log.splitlines() if "Received Store Response" in line]
        assert [r.split("(")[1].rstrip(")") for r in responses] == [
            "Success",
            "Success",
            "Refused: OutOfResources",
        ], log
        wait_for_jobs(started, 1)
    assert len(job_members(started[0], settings)) == 2


def test_probe_dicom_is_a_c_echo_to_the_listener(
    isolated_settings: Callable[..., Settings], started: list[str], dcmtk: None
) -> None:
    """Kubernetes' readiness probe of the listener (``covidct probe dicom``): exit 1 while
    nothing answers, success once the SCP echoes."""
    import typer

    from services.cli.service import probe_dicom

    port = free_port()
    settings = scp_settings(isolated_settings, dicom_port=port)
    with pytest.raises(typer.Exit) as down:
        probe_dicom(timeout=2.0)
    assert down.value.exit_code == 1
    with running_scp(settings, port):
        probe_dicom(timeout=10.0)  # returns: exit 0
