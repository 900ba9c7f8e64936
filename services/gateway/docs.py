"""``/docs`` without the internet: Swagger UI's assets served from this process.

FastAPI's default page loads Swagger UI from a CDN (blank offline, and against the console's
strict CSP). Here the page, its start script and the Swagger UI 5 bundle (shipped by the
``fastapi-offline`` package, no CDN) come from ``/docs-assets/``, so ``/docs`` carries the
same Content-Security-Policy as the console: no inline script, only this origin.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response

from services.gateway.console import NO_CACHE, SECURITY_HEADERS
from services.gateway.errors import ApiError

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
INIT_JS = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>covidct API</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/docs-assets/swagger-ui.css">
</head><body>
<div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script src="/docs-assets/init.js"></script>
</body></html>
"""


def install_docs(app: FastAPI) -> None:
    """``/docs`` and ``/docs-assets/*`` (create the app with ``docs_url=None``)."""
    router = APIRouter(include_in_schema=False)

    @router.api_route("/docs", methods=["GET", "HEAD"])
    def docs() -> Response:
        return HTMLResponse(PAGE, headers={**SECURITY_HEADERS, "Cache-Control": NO_CACHE})

    @router.api_route("/docs-assets/{name}", methods=["GET", "HEAD"])
    def asset(name: str) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": NO_CACHE}
        if name == "init.js":
            return Response(INIT_JS, media_type="text/javascript; charset=utf-8", headers=headers)
        if name not in ASSETS or not (ASSETS_DIR / name).is_file():
            raise ApiError(404, "not_found", "no such file")
        # Not content-hashed names: revalidated (ETag) rather than immutable.
        return FileResponse(ASSETS_DIR / name, media_type=ASSETS[name], headers=headers)

    app.include_router(router)
