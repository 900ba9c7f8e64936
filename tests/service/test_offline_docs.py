"""Offline polish: ``/docs`` with Swagger UI served by the gateway (no CDN) under the strict
CSP, HEAD answered like GET on ``/healthz`` and ``/model-card``, a favicon."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.asgi import create_app
from services.common.config import Settings
from services.gateway.console import CSP


@pytest.fixture
def client(
    isolated_settings: Callable[..., Settings], started: list[str], tmp_path: Path
) -> Iterator[TestClient]:
    isolated_settings(broker_url="redis://127.0.0.1:1/0", console_dir=str(tmp_path / "none"))
    with TestClient(create_app()) as test_client:
        yield test_client


def test_docs_load_everything_from_this_origin(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"] == CSP
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources)
    assert "<script>" not in page.text  # no inline script: CSP script-src 'self' holds
    for source in sources:
        response = client.get(source)
        assert response.status_code == 200, source
    bundle = client.get("/docs-assets/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["content-type"]
    assert len(bundle.content) > 500_000 and b"SwaggerUIBundle" in bundle.content
    # Swagger UI 5 reads OpenAPI 3.1, which FastAPI writes (4.x cannot render it).
    version = re.search(rb'PACKAGE_VERSION:"(\d+)\.', bundle.content)
    assert version is not None and int(version.group(1)) >= 5
    init = client.get("/docs-assets/init.js")
    assert "/openapi.json" in init.text
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert client.get("/docs-assets/../secret").status_code == 404
    assert client.get("/docs-assets/index.html").status_code == 404
    assert client.get("/redoc").status_code == 404  # one documentation page, CDN-free


@pytest.mark.parametrize("path", ["/healthz", "/model-card", "/docs", "/favicon.ico", "/"])
def test_head_answers_like_get(client: TestClient, path: str) -> None:
    got, head = client.get(path), client.head(path)
    assert got.status_code == head.status_code == 200, path
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.content == b""


def test_favicon_is_an_svg(client: TestClient) -> None:
    for path in ("/favicon.ico", "/favicon.svg"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert response.text.lstrip().startswith("<svg")
