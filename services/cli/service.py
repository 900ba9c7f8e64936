"""``covidct up | submit | worker | gateway | migrate``: running the service and talking to it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.common.config import ensure_directories, get_settings
from services.common.queue import QUEUES


def up(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Run everything on this machine: SQLite, embedded Redis, a worker, the gateway."""
    from services.cli.runtime import (
        StopRequested,
        run_until_stopped,
        start_stack,
        stop_signals,
        wait_ready,
    )

    # Signals are caught before the first child starts: a SIGTERM or Ctrl-C at any moment
    # of start-up stops every child already started (none is left holding its port).
    with stop_signals() as stop:
        try:
            stack = start_stack(get_settings(), port=port, concurrency=concurrency, stop=stop)
        except StopRequested:
            typer.echo("stopped during start-up", err=True)
            raise typer.Exit(0) from None
        try:
            wait_ready(stack.url, stop=stop, broker_url=stack.broker_url)
        except StopRequested:
            stack.stop()
            typer.echo("stopped during start-up", err=True)
            raise typer.Exit(0) from None
        except TimeoutError as exc:
            stack.stop()
            typer.echo(f"error: not_ready: {exc}", err=True)
            raise typer.Exit(1) from None
        except BaseException:
            stack.stop()
            raise
        try:
            settings = get_settings()
            typer.echo(
                f"covidct is up at {stack.url} (API docs at {stack.url}/docs); Ctrl-C stops it"
            )
            if (settings.console_dir / "index.html").is_file():
                typer.echo(
                    f"web console: {stack.url}/ (sign in with a key from `covidct tenants create`)"
                )
            else:
                typer.echo("web console not built: install Node.js 20.19+, then run make install")
        except BaseException:
            stack.stop()
            raise
        raise typer.Exit(run_until_stopped(stack, stop))


def submit(
    path: Annotated[Path, typer.Argument(help="Study: DICOM folder (zipped on the fly) or file.")],
    server: Annotated[str, typer.Option(help="Gateway URL.")] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="COVIDCT_API_KEY", help="Tenant API key.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Poll until the verdict.")] = False,
    callback_url: Annotated[str | None, typer.Option(help="Signed callback URL.")] = None,
    external_id: Annotated[str | None, typer.Option(help="Your reference.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Upload a study with tus (resumes an interrupted upload), then optionally wait."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from services.cli.client import ApiClient, ApiClientError
    from services.cli.client import submit as submit_study

    if not api_key:
        typer.echo("error: unauthorized: pass --api-key or set COVIDCT_API_KEY", err=True)
        raise typer.Exit(2)
    if not path.exists():
        typer.echo(f"error: unsupported_format: {path} does not exist", err=True)
        raise typer.Exit(2)
    client = ApiClient(server, api_key)
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=None if sys.stderr.isatty() else _quiet_console(),
            transient=not as_json,
        ) as bar:
            task = bar.add_task("upload", total=None)
            job, _done = submit_study(
                client,
                path,
                callback_url=callback_url,
                external_id=external_id,
                progress=lambda sent, total: bar.update(task, completed=sent, total=total),
            )
        job = client.wait(job["id"]) if wait else client.get_job(job["id"])
    except ApiClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(job, indent=2))
        return
    typer.echo(f"job {job['id']}: {job['status']}")
    if job.get("result"):
        result = job["result"]
        typer.echo(f"verdict {result['label']}  P(COVID) {result['probabilities']['COVID']:.3f}")
    if job.get("error"):
        typer.echo(f"error {job['error']['code']}: {job['error']['message']}")
    if job["status"] == "failed":
        raise typer.Exit(1)


def _quiet_console() -> Console:
    return Console(file=open(os.devnull, "w"))


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues.")] = ",".join(QUEUES),
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """A Celery worker (production: one deployment per queue, scaled apart)."""
    from services.cli.runtime import worker_command

    unknown = set(queues.split(",")) - set(QUEUES)
    if unknown:
        typer.echo(f"error: unknown queue(s) {sorted(unknown)}; known: {list(QUEUES)}", err=True)
        raise typer.Exit(2)
    os.execv(sys.executable, worker_command(concurrency, queues.split(",")))


def gateway(
    host: Annotated[str, typer.Option()] = "0.0.0.0",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """The FastAPI gateway (REST API + tus uploads)."""
    from services.cli.runtime import gateway_command

    os.execv(sys.executable, gateway_command(port, host))


def migrate_cmd(
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Apply nothing: wait until another process has brought the schema to this "
            "code's head revision (exit 1 after --timeout).",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 600.0,
) -> None:
    """Apply the Alembic migrations to COVIDCT_DATABASE_URL (SQLite by default)."""
    from services.common.db import head_revision, migrate, wait_for_schema

    settings = get_settings()
    ensure_directories(settings)
    url = settings.sqlalchemy_url
    where = url.split("@")[-1]
    if wait:
        if not wait_for_schema(url, timeout):
            typer.echo(
                f"error: {where} is not at revision {head_revision()} after {timeout:g} s", err=True
            )
            raise typer.Exit(1)
        typer.echo(f"{where} is at revision {head_revision()}")
        return
    migrate(url)
    typer.echo(f"migrated {where}")


def dicom_listen(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[
        int | None, typer.Option(help="DICOM port (default COVIDCT_DICOM_PORT, 11112).")
    ] = None,
) -> None:
    """The DICOM C-STORE SCP: a PACS sends CT series (AE titles: COVIDCT_DICOM_AE_TITLES);
    each series becomes one job once quiet for COVIDCT_DICOM_STABLE_AGE_S."""
    import signal
    import threading

    from services.common.queue import configure
    from services.upload.scp import ConfigurationError, serve

    settings = get_settings()
    ensure_directories(settings)
    configure(settings)  # jobs are queued on the broker these settings name
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    try:
        serve(settings, host, port or settings.dicom_port, stop)
    except ConfigurationError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


probe_app = typer.Typer(no_args_is_help=True, help="Health probes run inside a pod.")


@probe_app.command("scorer")
def probe_scorer(
    max_age: Annotated[
        float, typer.Option(help="Seconds a cached answer is reused (probes come often).")
    ] = 20.0,
) -> None:
    """The inference worker's readiness: its scorer (TorchServe /ping, or the in-process
    model's files) answers; exit 1 when not. Loads no model."""
    from services.inference.probe import cached_scorer_ready

    settings = get_settings()
    cache = settings.var_dir / "probe" / "scorer.json"
    if not cached_scorer_ready(settings, cache, max_age):
        typer.echo("error: scorer_unavailable: the scorer does not answer", err=True)
        raise typer.Exit(1)
    typer.echo("scorer ready")


@probe_app.command("dicom")
def probe_dicom(
    timeout: Annotated[float, typer.Option(help="Seconds for the whole verification.")] = 10.0,
) -> None:
    """The DICOM listener's readiness: a C-ECHO to it on 127.0.0.1, as the first calling AE
    title of COVIDCT_DICOM_AE_TITLES (the listener refuses any other); exit 1 when it does
    not answer Success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    settings = get_settings()
    calling = next(iter(settings.dicom_ae_titles), "")
    if not calling:
        typer.echo("error: COVIDCT_DICOM_AE_TITLES is empty", err=True)
        raise typer.Exit(1)
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.dicom_ae_title)
    if not assoc.is_established:
        typer.echo("error: dicom_unavailable: the association was not accepted", err=True)
        raise typer.Exit(1)
    status = assoc.send_c_echo()
    assoc.release()
    if not status or status.Status != 0:
        typer.echo("error: dicom_unavailable: C-ECHO did not answer Success", err=True)
        raise typer.Exit(1)
    typer.echo("dicom listener ready")
