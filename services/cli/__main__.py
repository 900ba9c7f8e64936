"""``python -m services.cli`` runs the ``covidct`` command."""

from services.cli.main import app

app()
