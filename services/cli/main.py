"""The one ``covidct`` command, grouped by audience: model users (diagnose, evaluate,
train), service operators (up, worker, gateway, migrate), integrators (submit) and admins
(tenants, models)."""

from __future__ import annotations

import typer

from services.cli import admin, blobs, ml, service
from services.common.config import get_settings
from services.common.logging import configure_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="COVID-19 chest-CT diagnosis.")


@app.callback()
def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


app.command("diagnose")(ml.diagnose)
app.add_typer(ml.evaluate_app, name="evaluate")
app.add_typer(ml.train_app, name="train")
app.command("up")(service.up)
app.command("submit")(service.submit)
app.command("worker")(service.worker)
app.command("gateway")(service.gateway)
app.command("dicom-listen")(service.dicom_listen)
app.command("migrate")(service.migrate_cmd)
app.add_typer(service.probe_app, name="probe")
app.add_typer(admin.tenants_app, name="tenants")
app.add_typer(admin.models_app, name="models")
app.add_typer(admin.users_app, name="users")
app.add_typer(blobs.blobs_app, name="blobs")
