"""``covidct tenants | models``: administration (API keys, model archives)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.common.config import REPO_ROOT, ensure_directories, get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.common.orm import Tenant

tenants_app = typer.Typer(
    no_args_is_help=True, help="Manage tenants (API keys, secrets, result destinations)."
)
models_app = typer.Typer(no_args_is_help=True, help="Package the shipped models.")
users_app = typer.Typer(no_args_is_help=True, help="Manage a tenant's console users and roles.")


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
            body = create_tenant(session, settings, name)
    except IntegrityError:
        typer.echo(f"error: tenant_exists: a tenant named {name!r} exists", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(body))
    else:
        for key, value in body.items():
            typer.echo(f"{key:15s} {value}")


def _tenant_command(name: str, action: Callable[[Session, Tenant], object]) -> object:
    """Run ``action`` on tenant ``name`` in one transaction; clear errors, exit 2."""
    from services.common.accounts import AccountError
    from services.common.db import migrate, session_scope
    from services.common.destinations import DestinationError
    from services.common.tenants import LastActive, TenantNotFound, TooManyActive, tenant_by_name

    settings = get_settings()
    ensure_directories(settings)
    migrate(settings.sqlalchemy_url)
    try:
        with session_scope() as session:
            return action(session, tenant_by_name(session, name))
    except TenantNotFound:
        typer.echo(f"error: tenant_not_found: no tenant named {name!r}", err=True)
    except (TooManyActive, LastActive) as exc:
        typer.echo(f"error: {exc}", err=True)
    except (AccountError, DestinationError) as exc:
        typer.echo(f"error: {exc.code}: {exc}", err=True)
    raise typer.Exit(2)


@tenants_app.command("add-key")
def tenants_add_key(name: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """Add a second API key (printed once); the old one works until `revoke-key`."""
    from services.common.tenants import add_api_key

    typer.echo(_tenant_command(name, add_api_key))


@tenants_app.command("revoke-key")
def tenants_revoke_key(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    prefix: Annotated[str, typer.Argument(help="The key's prefix, as `list-keys` shows it.")],
) -> None:
    """Revoke an API key at once (refused if it is the tenant's last active key)."""
    from services.common.tenants import revoke_api_key

    count = _tenant_command(name, lambda s, t: revoke_api_key(s, t, prefix))
    typer.echo(f"revoked {count} key(s)")
    if not count:
        raise typer.Exit(1)


@tenants_app.command("list-keys")
def tenants_list_keys(name: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """The tenant's API keys (prefix, created, revoked); never the keys themselves."""
    from services.common.tenants import list_api_keys

    keys = _tenant_command(name, list_api_keys)
    assert isinstance(keys, list)
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        typer.echo(f"{key.prefix:16s} created {key.created_at:%Y-%m-%d %H:%M}  {state}")


@tenants_app.command("add-webhook-secret")
def tenants_add_webhook_secret(name: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """Add a new signing secret (printed once); callbacks carry both signatures until
    `retire-webhook-secrets`."""
    from services.common.tenants import add_webhook_secret

    typer.echo(_tenant_command(name, lambda s, t: add_webhook_secret(s, get_settings(), t)))


@tenants_app.command("retire-webhook-secrets")
def tenants_retire_webhook_secrets(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
) -> None:
    """Sign callbacks with the newest secret only."""
    from services.common.tenants import retire_old_webhook_secrets

    typer.echo(f"retired {_tenant_command(name, retire_old_webhook_secrets)} secret(s)")


@tenants_app.command("add-destination")
def tenants_add_destination(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    destination: Annotated[str, typer.Argument(help="A name for the destination, e.g. pacs1.")],
    url: Annotated[
        str | None,
        typer.Option(help="DICOMweb root (STOW-RS to <url>/studies), e.g. http://pacs/dicom-web."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="DICOM node (C-STORE): host.")] = None,
    port: Annotated[int | None, typer.Option(help="DICOM node: port.")] = None,
    ae_title: Annotated[str | None, typer.Option(help="DICOM node: its (called) AE title.")] = None,
    fhir: Annotated[
        bool, typer.Option("--fhir", help="--url is a FHIR R4 server's base: POST the report.")
    ] = False,
) -> None:
    """Send every finished job's DICOM SR and SEG there: a DICOMweb endpoint (--url) or a
    DICOM node (--host --port --ae-title); or its FHIR DiagnosticReport (--url ... --fhir).
    Checked like callback URLs (no private address unless COVIDCT_WEBHOOK_ALLOWED_NETWORKS
    lists it)."""
    from services.common.destinations import add_destination, describe

    kind = "fhir" if fhir else "dicomweb" if url else "dimse"
    settings = get_settings()

    def action(session: Session, tenant: Tenant) -> str:
        added = add_destination(
            session, settings, tenant, destination, kind,
            url=url, host=host, port=port, ae_title=ae_title,
        )  # fmt: skip
        _audited(session, tenant, "destination_add", name=added.name, target=describe(added))
        return f"{added.name}: {describe(added)}"

    typer.echo(_tenant_command(name, action))


@tenants_app.command("list-destinations")
def tenants_list_destinations(name: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """The tenant's active result destinations."""
    from services.common.destinations import active_destinations, describe

    def action(session: Session, tenant: Tenant) -> list[str]:
        return [f"{d.name:20s} {describe(d)}" for d in active_destinations(session, tenant.id)]

    lines = _tenant_command(name, action)
    assert isinstance(lines, list)
    for line in lines:
        typer.echo(line)


@tenants_app.command("remove-destination")
def tenants_remove_destination(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    destination: Annotated[str, typer.Argument(help="The destination's name.")],
) -> None:
    """Stop sending results there (its delivery records stay)."""
    from services.common.destinations import remove_destination

    def action(session: Session, tenant: Tenant) -> bool:
        removed = remove_destination(session, tenant, destination)
        if removed:
            _audited(session, tenant, "destination_remove", name=destination)
        return removed

    if not _tenant_command(name, action):
        typer.echo(f"error: destination_not_found: {name} has no destination {destination!r}")
        raise typer.Exit(1)
    typer.echo(f"removed {destination}")


@tenants_app.command("reencrypt-secrets")
def tenants_reencrypt_secrets() -> None:
    """Re-encrypt every stored webhook secret under the first key of COVIDCT_SECRET_KEYS."""
    from services.common.db import migrate, session_scope
    from services.common.tenants import reencrypt_webhook_secrets

    settings = get_settings()
    ensure_directories(settings)
    migrate(settings.sqlalchemy_url)
    with session_scope() as session:
        count = reencrypt_webhook_secrets(session, settings)
    typer.echo(f"re-encrypted {count} secret(s)")


ROLE_HELP = "viewer (reads results), uploader (also creates and deletes jobs) or admin."


def _audited(session: Session, tenant: Tenant, action: str, **detail: str) -> None:
    from services.common.audit import Action, record

    record(session, tenant.id, "cli", Action(action), detail=detail)


@users_app.command("create")
def users_create(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    username: Annotated[str, typer.Argument(help="Username (unique in the tenant).")],
    role: Annotated[str, typer.Option(help=ROLE_HELP)] = "viewer",
    sso_only: Annotated[
        bool, typer.Option("--sso-only", help="No password: signs in by single sign-on only.")
    ] = False,
) -> None:
    """Create a user; the password is asked for twice (or read from COVIDCT_NEW_PASSWORD)."""
    import os

    from services.common.accounts import create_user

    password = None
    if not sso_only:
        password = os.environ.get("COVIDCT_NEW_PASSWORD") or typer.prompt(
            "Password", hide_input=True, confirmation_prompt=True
        )

    def action(session: Session, found: Tenant) -> str:
        user = create_user(session, found, username, role, password)
        _audited(session, found, "user_create", username=user.username, role=user.role)
        return f"created {user.username} ({user.role}) in {found.name}"

    typer.echo(_tenant_command(tenant, action))


@users_app.command("list")
def users_list(tenant: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """The tenant's users: name, role, created, whether they have a password."""
    from services.common.accounts import list_users

    users = _tenant_command(tenant, list_users)
    assert isinstance(users, list)
    for user in users:
        login = "password" if user.has_password else "sso-only"
        typer.echo(f"{user.username:24s} {user.role:9s} {user.created_at:%Y-%m-%d %H:%M}  {login}")


@users_app.command("delete")
def users_delete(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    username: Annotated[str, typer.Argument(help="Username.")],
) -> None:
    """Delete a user; their console sessions end at once."""
    from services.common.accounts import delete_user

    def action(session: Session, found: Tenant) -> str:
        delete_user(session, found, username)
        _audited(session, found, "user_delete", username=username)
        return f"deleted {username}"

    typer.echo(_tenant_command(tenant, action))


@users_app.command("set-role")
def users_set_role(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    username: Annotated[str, typer.Argument(help="Username.")],
    role: Annotated[str, typer.Argument(help=ROLE_HELP)],
) -> None:
    """Change a user's role (effective on their next request)."""
    from services.common.accounts import set_role

    def action(session: Session, found: Tenant) -> str:
        old = set_role(session, found, username, role)
        _audited(session, found, "user_role_change", username=username, old_role=old, role=role)
        return f"{username}: {old} -> {role}"

    typer.echo(_tenant_command(tenant, action))


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
