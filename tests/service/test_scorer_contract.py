"""The scorer contract (docs/architecture.md, "The scorer contract") is all the inference
worker needs of a model server: a plain FastAPI scorer that implements only that contract,
and knows nothing of TorchServe, serves the worker's scorer, its readiness probe and the
inference stage; the worker asks it for nothing else. And no code outside the two client
modules talks to the model server at all.
"""

from __future__ import annotations

import ast
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.cli.runtime import free_port
from services.common.config import Settings
from services.inference.handler import encode_slices
from services.inference.probe import scorer_reachable
from services.inference.scorer import ScorerUnavailable, make_scorer
from services.inference.stage import score_slices
from tests.support.service import serving

SERVICES = Path(__file__).resolve().parents[2] / "services"
MODEL = "slice-cnn"
VERSION = "contract-v0"
SIZE = 8


@dataclass
class PlainScorer:
    """A model server written from the contract alone; its "model" is the mean intensity."""

    requests: list[str] = field(default_factory=list)
    failure: int | None = None  # answer every /predictions with this status
    drop_a_row: bool = False

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record(request: Request, call_next):  # type: ignore[no-untyped-def]
            self.requests.append(f"{request.method} {request.url.path}")
            return await call_next(request)

        @app.get("/ping")
        def ping() -> dict[str, str]:
            return {"status": "Healthy"}

        @app.post(f"/predictions/{MODEL}")
        async def predict(request: Request) -> Response:
            if self.failure is not None:
                return JSONResponse({"error": "overloaded"}, status_code=self.failure)
            if request.headers.get("content-type") != "application/octet-stream":
                return JSONResponse({"error": "expected application/octet-stream"}, 415)
            try:
                slices = np.load(io.BytesIO(await request.body()), allow_pickle=False)
            except ValueError as exc:
                return JSONResponse({"error": f"not a .npy file: {exc}"}, status_code=400)
            if slices.dtype != np.uint8 or slices.ndim != 3 or slices.shape[1:] != (SIZE, SIZE):
                return JSONResponse({"error": f"bad slices {slices.shape}"}, status_code=400)
            covid = slices.reshape(len(slices), SIZE * SIZE).mean(axis=1) / 255.0  # n may be 0
            rows = np.stack([1.0 - covid, covid], axis=1).tolist()
            if self.drop_a_row:
                rows = rows[:-1]
            return JSONResponse(
                {"probabilities": rows, "model_name": MODEL, "model_version": VERSION}
            )

        return app


@pytest.fixture
def plain() -> Iterator[tuple[PlainScorer, str]]:
    scorer = PlainScorer()
    with serving(scorer.app()) as url:
        yield scorer, url


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        scorer_url=url,
        scorer_model_name=MODEL,
        scorer_batch_size=2,
        scorer_concurrency=2,
        scorer_timeout_s=10,
    )


def test_the_worker_scores_through_a_server_that_implements_only_the_contract(
    plain: tuple[PlainScorer, str], tmp_path: Path
) -> None:
    server, url = plain
    settings = _settings(tmp_path, url)
    slices = np.stack([np.full((SIZE, SIZE), v, np.uint8) for v in (0, 51, 102, 153, 204)])
    scorer = make_scorer(settings)
    assert scorer.ready() and scorer_reachable(settings)
    batch = score_slices(slices, scorer)  # the inference stage, as the task calls it
    assert batch.probabilities[:, 1] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert batch.probabilities.sum(axis=1) == pytest.approx(np.ones(5))
    assert (batch.model_name, batch.model_version) == (MODEL, VERSION)
    # No slices: still one request, whose answer names the model version.
    assert score_slices(np.zeros((0, SIZE, SIZE), np.uint8), scorer).model_version == VERSION
    # Five slices in requests of two: three requests, rows back in order. Nothing else asked.
    assert set(server.requests) == {"GET /ping", f"POST /predictions/{MODEL}"}
    assert server.requests.count(f"POST /predictions/{MODEL}") == 3 + 1


def test_contract_errors_map_to_the_worker_s_two_failures(
    plain: tuple[PlainScorer, str], tmp_path: Path
) -> None:
    """4xx: the input is wrong (ValueError, the job fails); 5xx, a wrong row count or no
    server: try again later (ScorerUnavailable, the task is retried)."""
    server, url = plain
    scorer = make_scorer(_settings(tmp_path, url))
    with pytest.raises(ValueError, match="400"):
        scorer.score(np.zeros((1, SIZE + 1, SIZE + 1), np.uint8))
    server.drop_a_row = True
    with pytest.raises(ScorerUnavailable, match="probability rows"):
        scorer.score(np.zeros((2, SIZE, SIZE), np.uint8))
    server.drop_a_row, server.failure = False, 503
    with pytest.raises(ScorerUnavailable, match="503"):
        scorer.score(np.zeros((1, SIZE, SIZE), np.uint8))
    gone = make_scorer(_settings(tmp_path, f"http://127.0.0.1:{free_port()}"))
    assert not gone.ready()
    with pytest.raises(ScorerUnavailable):
        gone.score(np.zeros((1, SIZE, SIZE), np.uint8))


def test_the_request_body_is_a_plain_npy_file() -> None:
    """What a server in another language reads: NumPy's .npy format, no pickle."""
    slices = np.arange(2 * SIZE * SIZE, dtype=np.uint8).reshape(2, SIZE, SIZE)
    body = encode_slices(slices)
    assert body.startswith(b"\x93NUMPY")
    np.testing.assert_array_equal(np.load(io.BytesIO(body), allow_pickle=False), slices)


def test_only_the_scorer_clients_reach_the_model_server() -> None:
    """``scorer_url`` is read by the two client modules (and passed on by the CLI), and no
    code imports TorchServe's ``ts`` package: swapping the server touches nothing else."""
    readers: set[str] = set()
    ts_importers: set[str] = set()
    for path in SERVICES.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        relative = str(path.relative_to(SERVICES.parent))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "scorer_url":
                readers.add(relative)
            if isinstance(node, ast.Import) and any(
                a.name == "ts" or a.name.startswith("ts.") for a in node.names
            ):
                ts_importers.add(relative)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ts":
                ts_importers.add(relative)
    assert readers == {
        "services/inference/scorer.py",
        "services/inference/probe.py",
        "services/cli/runtime.py",
    }
    assert ts_importers == set()
