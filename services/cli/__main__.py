"""``python -m services.cli``: the same as the ``covidct`` executable."""

from services.cli.entry import run

run()
