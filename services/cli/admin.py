"""``covidct tenants | models``: administration (API keys, model archives)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from services.common.config import REPO_ROOT, ensure_directories, get_settings

tenants_app = typer.Typer(no_args_is_help=True, help="Manage tenants (API keys, secrets).")
models_app = typer.Typer(no_args_is_help=True, help="Package the shipped models.")


@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="Tenant name (unique).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create a tenant; its API key is printed once and only its hash is stored."""
    from sqlalchemy.exc import IntegrityError

    from services.common.db import migrate, session_scope
    from services.common.tenants import create_tenant

    settings = get_settings()
    ensure_directories(settings)  # owner-only, in case this creates the SQLite database
    migrate(settings.sqlalchemy_url)
    try:
        with session_scope() as session:
            body = create_tenant(session, name)
    except IntegrityError:
        typer.echo(f"error: tenant_exists: a tenant named {name!r} exists", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(body))
    else:
        for key, value in body.items():
            typer.echo(f"{key:15s} {value}")


@models_app.command("build-mar")
def build_mar_cmd(
    version: Annotated[
        str | None, typer.Option(help="Slice-CNN version (default: settings).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Model store directory.")] = REPO_ROOT
    / "build"
    / "model-store",
) -> None:
    """Pack the shipped slice CNN into a TorchServe archive (eager mode, batching on)."""
    from services.inference.mar import build_mar

    settings = get_settings()
    if version is not None:
        settings = settings.model_copy(update={"slice_model_version": version})
    path = build_mar(settings.slice_model_dir, out, model_name=settings.scorer_model_name)
    typer.echo(str(path))
