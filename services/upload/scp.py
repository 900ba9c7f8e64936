"""The DICOM C-STORE SCP (``covidct dicom-listen``): a PACS or modality sends CT series by
DIMSE, each series becomes one job.

- Associations: called AE title must be ``dicom_ae_title``; the calling AE title must be a
  key of ``dicom_ae_titles`` (AE title -> tenant name or id), any other is rejected at
  association (A-ASSOCIATE-RJ, "calling AE title not recognised"). Verification (C-ECHO)
  and every storage SOP class in every transfer syntax are accepted; what is not a CT image
  is refused per instance (status 0x0122), as the STOW-RS door does (``dicom_intake``).
- Each accepted instance is written under ``<var_dir>/dicom-spool/<tenant>/<series>/`` (a
  resent instance replaces itself). A series is complete once no association is sending
  to it and nothing arrived for ``dicom_stable_age_s`` (Orthanc's StableAge); then it
  becomes one job through ``create_series_job`` and its folder goes. The job's
  ``created_by`` is ``ae:<calling AE title>`` (noted per series in ``senders.jsonl``), and
  the audit trail gets its ``job_create`` event with the sender's address.
- An association that ends without a release (aborted, or the connection dropped) keeps
  none of what it sent: the sender counts that transfer as failed and sends it again, and a
  half-sent series never becomes a job. Limits: a series over ``max_upload_bytes`` or
  ``max_archive_members`` instances is refused further instances (0xA700, out of resources).
- The spool survives a restart: series left there are completed once quiet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import or_, select

from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Tenant
from services.upload.dicom_intake import (
    OUT_OF_RESOURCES,
    InstanceRefused,
    check_instance,
    create_series_job,
)

log = logging.getLogger(__name__)

SUCCESS = 0x0000
INCOMING = ".incoming"  # instances being written and checked, not yet part of a series
SENDERS = "senders.jsonl"  # in a series folder: the calling AE titles that sent to it


class ConfigurationError(ValueError):
    """The SCP cannot start with these settings (one clear line for the operator)."""


def tenants_by_ae_title(settings: Settings) -> dict[str, str]:
    """``dicom_ae_titles`` resolved to tenant ids; every tenant must exist."""
    if not settings.dicom_ae_titles:
        raise ConfigurationError(
            "COVIDCT_DICOM_AE_TITLES is empty: set a JSON map of calling AE titles to tenant "
            'names, e.g. {"PACS1": "hospital-a"}'
        )
    resolved: dict[str, str] = {}
    with session_scope() as session:
        for ae_title, tenant in settings.dicom_ae_titles.items():
            if not 0 < len(ae_title.strip()) <= 16:
                raise ConfigurationError(f"AE title {ae_title!r} must have 1 to 16 characters")
            tenant_id = session.scalar(
                select(Tenant.id).where(or_(Tenant.name == tenant, Tenant.id == tenant))
            )
            if tenant_id is None:
                raise ConfigurationError(f"AE title {ae_title}: no tenant {tenant!r}")
            resolved[ae_title.strip()] = tenant_id
    return resolved


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:40]


@dataclass
class _Sending:
    """What one association stored: files it created, series it holds open."""

    tenant_id: str
    ae_title: str  # the calling AE title: who created the jobs of what it sends
    address: str | None
    created: list[Path] = field(default_factory=list)
    series: set[Path] = field(default_factory=set)
    released: bool = False


class SeriesSpool:
    """Instances per tenant and series on disk; completes quiet series into jobs."""

    def __init__(self, settings: Settings, ae_tenants: dict[str, str]) -> None:
        self.settings = settings
        self.root = settings.dicom_spool_dir
        self.ae_tenants = ae_tenants
        self._lock = threading.Lock()
        self._sending: dict[int, _Sending] = {}  # id(association) -> its state
        self._open: dict[Path, int] = {}  # series folder -> associations sending to it
        shutil.rmtree(self.root / INCOMING, ignore_errors=True)
        (self.root / INCOMING).mkdir(mode=0o700, parents=True, exist_ok=True)

    # Association events (pynetdicom calls them on the association's thread).

    def on_accepted(self, event: evt.Event) -> None:
        calling = event.assoc.requestor.ae_title.strip()
        tenant_id = self.ae_tenants.get(calling)
        if tenant_id is not None:  # pynetdicom's require_calling_aet rejected the others
            with self._lock:
                address = event.assoc.requestor.address or None
                self._sending[id(event.assoc)] = _Sending(tenant_id, calling, address)

    def on_released(self, event: evt.Event) -> None:
        with self._lock:
            sending = self._sending.get(id(event.assoc))
            if sending is not None:
                sending.released = True

    def on_closed(self, event: evt.Event) -> None:
        with self._lock:
            sending = self._sending.pop(id(event.assoc), None)
            if sending is None:
                return
            for folder in sending.series:
                self._open[folder] -= 1
                if not self._open[folder]:
                    del self._open[folder]
            if sending.released:
                return
            for path in sending.created:  # aborted: the sender will send it all again
                path.unlink(missing_ok=True)
            for folder in sending.series:
                if folder not in self._open and folder.is_dir() and not any(folder.glob("*.dcm")):
                    shutil.rmtree(folder, ignore_errors=True)  # its senders note with it
        if sending.created:
            log.warning(
                "association from %s ended without release: %d instances dropped",
                event.assoc.requestor.ae_title, len(sending.created),
            )  # fmt: skip

    def on_echo(self, _event: evt.Event) -> int:
        return SUCCESS

    def on_store(self, event: evt.Event) -> int:
        with self._lock:
            sending = self._sending.get(id(event.assoc))
        if sending is None:
            return OUT_OF_RESOURCES  # not reached: unknown AE titles are rejected
        incoming = self.root / INCOMING / f"{uuid.uuid4().hex}.dcm"
        try:
            _write_part10(event, incoming)
            instance = check_instance(incoming)
        except InstanceRefused as refused:
            incoming.unlink(missing_ok=True)
            log.info("instance refused (0x%04X): %s", refused.status, refused.reason)
            return refused.status
        except OSError:
            incoming.unlink(missing_ok=True)
            log.exception("cannot write a received instance")
            return OUT_OF_RESOURCES
        folder = self.root / sending.tenant_id / _digest(instance.series_uid)
        target = folder / f"{_digest(instance.sop_instance)}.dcm"
        with self._lock:
            if not target.exists() and self._over_limits(folder, incoming):
                incoming.unlink(missing_ok=True)
                return OUT_OF_RESOURCES
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not target.exists():
                sending.created.append(target)
            os.replace(incoming, target)
            if folder not in sending.series:
                sending.series.add(folder)
                self._open[folder] = self._open.get(folder, 0) + 1
                _add_sender(folder, sending.ae_title, sending.address)
        return SUCCESS

    def _over_limits(self, folder: Path, incoming: Path) -> bool:
        if not folder.is_dir():
            return False
        files = list(folder.glob("*.dcm"))
        size = sum(f.stat().st_size for f in files) + incoming.stat().st_size
        members = len(files) + 1
        over = size > self.settings.max_upload_bytes or members > self.settings.max_archive_members
        if over:
            log.warning("series %s is over the upload limits: instance refused", folder.name)
        return over

    # Completion.

    def _series(self) -> Iterator[tuple[str, Path]]:
        for tenant_dir in self.root.iterdir():
            if tenant_dir.name == INCOMING or not tenant_dir.is_dir():
                continue
            for folder in tenant_dir.iterdir():
                if folder.is_dir():
                    yield tenant_dir.name, folder

    def complete_quiet_series(self, now: float | None = None) -> list[str]:
        """Every series quiet for ``dicom_stable_age_s`` with no sender becomes a job."""
        now = time.time() if now is None else now
        jobs: list[str] = []
        for tenant_id, folder in list(self._series()):
            with self._lock:
                if folder in self._open:
                    continue
                files = sorted(folder.glob("*.dcm"))
                newest = max((f.stat().st_mtime for f in files), default=0.0)
                if files and now - newest < self.settings.dicom_stable_age_s:
                    continue
                # A late instance of the series starts a new folder; a retry keeps one suffix.
                base = folder.name.split(".job-")[0]
                ready = folder.with_name(f"{base}.job-{uuid.uuid4().hex[:8]}")
                folder.rename(ready)
            if files:
                ae_titles, address = _senders(ready)
                job_id, _ = create_series_job(
                    tenant_id, sorted(ready.glob("*.dcm")), self.settings,
                    created_by=f"ae:{','.join(ae_titles) or '?'}", via="c-store",
                    client_address=address,
                )  # fmt: skip
                jobs.append(job_id)
            shutil.rmtree(ready, ignore_errors=True)
        return jobs


def _add_sender(folder: Path, ae_title: str, address: str | None) -> None:
    """Note who sends to a series (beside its instances, so it survives a restart): the
    job it becomes is created by these AE titles."""
    line = json.dumps({"ae_title": ae_title, "address": address})
    path = folder / SENDERS
    known = path.read_text().splitlines() if path.exists() else []
    if line not in known:
        with path.open("a") as handle:
            handle.write(line + "\n")


def _senders(folder: Path) -> tuple[list[str], str | None]:
    """The distinct calling AE titles of a series (in order of arrival) and the first
    sender's address."""
    titles: list[str] = []
    address = None
    try:
        lines = (folder / SENDERS).read_text().splitlines()
    except OSError:
        return titles, address
    for line in lines:
        try:
            sender = json.loads(line)
        except ValueError:
            continue  # a line a crash cut short
        if sender.get("ae_title") and sender["ae_title"] not in titles:
            titles.append(str(sender["ae_title"]))
        address = address or sender.get("address")
    return titles, address


def _write_part10(event: evt.Event, path: Path) -> None:
    """The received data set as a Part-10 file, byte for byte as sent (no re-encoding)."""
    request = event.request
    assert isinstance(request, C_STORE) and request.DataSet is not None  # a C-STORE event
    with path.open("wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(handle), event.file_meta, enforce_standard=True)
        handle.write(request.DataSet.getvalue())


def application_entity(settings: Settings, spool: SeriesSpool) -> AE:
    ae = AE(ae_title=settings.dicom_ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None  # every storage context names its class
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    ae.require_calling_aet = list(spool.ae_tenants)
    ae.maximum_associations = settings.dicom_max_associations
    return ae


def handlers(spool: SeriesSpool) -> list[Any]:
    return [
        (evt.EVT_ACCEPTED, spool.on_accepted),
        (evt.EVT_RELEASED, spool.on_released),
        (evt.EVT_CONN_CLOSE, spool.on_closed),
        (evt.EVT_C_ECHO, spool.on_echo),
        (evt.EVT_C_STORE, spool.on_store),
    ]


def serve(settings: Settings, host: str, port: int, stop: threading.Event) -> None:
    """Listen until ``stop`` is set; complete quiet series every second meanwhile."""
    spool = SeriesSpool(settings, tenants_by_ae_title(settings))
    ae = application_entity(settings, spool)
    server = ae.start_server((host, port), block=False, evt_handlers=handlers(spool))
    assert server is not None  # non-blocking start returns the server
    log.info("DICOM SCP %s listening on %s:%d", settings.dicom_ae_title, host, port)
    interval = min(1.0, max(settings.dicom_stable_age_s / 4, 0.1))
    try:
        while not stop.wait(interval):
            try:
                spool.complete_quiet_series()
            except Exception:  # the database may be away for a moment: try again next round
                log.exception("completing quiet series failed")
    finally:
        server.shutdown()
