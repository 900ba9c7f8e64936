"""Write the gateway's OpenAPI document to ``console/src/api/openapi.json``, the input of
the console's generated TypeScript client (``npm run gen:api``, run by ``npm run build``).

``tests/service/test_console_api.py`` fails while the committed file differs from what the
app says, so an API change shows up in the console's type check.

    python -m scripts.export_openapi [--check]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENAPI_JSON = REPO_ROOT / "console" / "src" / "api" / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The app's schema, built with throw-away settings (no database is touched)."""
    import os

    from services.common.caches import clear_process_caches

    with tempfile.TemporaryDirectory() as var_dir:
        saved = os.environ.get("COVIDCT_VAR_DIR")
        os.environ["COVIDCT_VAR_DIR"] = var_dir
        clear_process_caches()
        try:
            from services.asgi import create_app

            return create_app().openapi()
        finally:
            if saved is None:
                os.environ.pop("COVIDCT_VAR_DIR", None)
            else:
                os.environ["COVIDCT_VAR_DIR"] = saved
            clear_process_caches()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render(openapi_document())
    if "--check" in argv:
        if not OPENAPI_JSON.exists() or OPENAPI_JSON.read_text() != text:
            print(f"{OPENAPI_JSON} is stale: run python -m scripts.export_openapi")
            return 1
        return 0
    OPENAPI_JSON.parent.mkdir(parents=True, exist_ok=True)
    OPENAPI_JSON.write_text(text)
    print(f"wrote {OPENAPI_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
