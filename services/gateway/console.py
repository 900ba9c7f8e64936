"""The web console (``console/``, built to ``console/dist``) served at ``/``.

- ``index.html``: ``Cache-Control: no-cache`` (always revalidated, so a new build is seen at
  once); Vite's content-hashed ``/assets/*``: cached for a year, ``immutable``.
- Every console response carries a strict Content-Security-Policy: only this origin's
  scripts, no inline script, no eval, no framing, no plugins. ``style-src`` allows
  ``'unsafe-inline'`` because Ant Design and Uppy set styles at run time (CSS-in-JS and
  style attributes); a style cannot run code, and script-src stays strict.
- Not built: ``/`` says how to build it (``make install`` with Node.js present).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from services.gateway.errors import ApiError

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"

NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>covidct console not built</title></head><body>
<h1>The covidct console is not built</h1>
<p>Install Node.js 20.19 or later, then run <code>make install</code> (or
<code>cd console &amp;&amp; npm ci &amp;&amp; npm run build</code>) and reload this page.
The API works without it: see <a href="/docs">/docs</a>.</p></body></html>"""


# The service's icon: a lung-window grey disc (an axial CT field of view) with two lungs.
FAVICON_SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<circle cx="16" cy="16" r="15" fill="#1f2937"/>
<ellipse cx="11" cy="16" rx="5" ry="8.5" fill="#0b0f14" stroke="#9ca3af" stroke-width="1.2"/>
<ellipse cx="21" cy="16" rx="5" ry="8.5" fill="#0b0f14" stroke="#9ca3af" stroke-width="1.2"/>
<circle cx="20" cy="13" r="2" fill="#e5e7eb" opacity="0.7"/>
</svg>
"""


def install_console(app: FastAPI, dist: Path, model_cards: list[Path]) -> None:
    """Serve the built console from ``dist`` and the shipped model cards at
    ``/model-card``; routes are added last (after the API)."""
    router = APIRouter(include_in_schema=False)
    root = dist.resolve()

    @router.api_route("/favicon.svg", methods=["GET", "HEAD"])
    @router.api_route("/favicon.ico", methods=["GET", "HEAD"])
    def favicon() -> Response:
        # Browsers ask for /favicon.ico on their own; every current one renders SVG there.
        return Response(
            FAVICON_SVG,
            media_type="image/svg+xml",
            headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"},
        )

    @router.api_route("/model-card", methods=["GET", "HEAD"])
    def model_card() -> Response:
        text = "\n\n---\n\n".join(p.read_text() for p in model_cards if p.is_file())
        return PlainTextResponse(
            text or "no model card shipped",
            headers={**SECURITY_HEADERS, "Cache-Control": NO_CACHE},
        )

    @router.api_route("/", methods=["GET", "HEAD"])
    def index() -> Response:
        page = root / "index.html"
        if not page.is_file():
            return HTMLResponse(NOT_BUILT, headers={**SECURITY_HEADERS, "Cache-Control": NO_CACHE})
        return FileResponse(
            page,
            media_type="text/html; charset=utf-8",
            headers={**SECURITY_HEADERS, "Cache-Control": NO_CACHE},
        )

    @router.get("/assets/{name:path}")
    def asset(name: str) -> Response:
        return _file(root, root / "assets" / name, IMMUTABLE)

    @router.get("/{name}")
    def top_level(name: str) -> Response:
        """Top-level static files of the build (favicon.svg ...), revalidated each time."""
        if name == "index.html":
            return index()
        return _file(root, root / name, NO_CACHE)

    app.include_router(router)


def _file(root: Path, path: Path, cache_control: str) -> Response:
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise ApiError(404, "not_found", "no such file")
    media_type = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
    return FileResponse(
        resolved,
        media_type=media_type,
        headers={**SECURITY_HEADERS, "Cache-Control": cache_control},
    )
