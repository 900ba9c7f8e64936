"""The scorer contract: prepared slices in, [NonCOVID, COVID] probabilities out.

Callers depend on :class:`Scorer` only. Two implementations run the same handler code
(:mod:`services.inference.handler`): in this process (embedded mode, tests) or behind
TorchServe (production). TorchServe's repository is archived, so nothing outside this module
knows it exists; another model server needs only another ``Scorer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import numpy as np
from numpy.typing import NDArray

from services.common.caches import process_cache
from services.common.config import Settings
from services.inference.handler import SliceScoringHandler, encode_slices

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ScorerUnavailable(Exception):
    """The scorer cannot answer now (server down, overloaded, model missing); retry later."""


@dataclass(frozen=True)
class ScoreBatch:
    probabilities: NDArray[np.float64]  # (N, 2) [NonCOVID, COVID]
    model_name: str
    model_version: str


class Scorer(Protocol):
    def score(self, inputs: NDArray[np.uint8]) -> ScoreBatch:
        """(N, S, S) uint8 prepared slices -> probabilities; ValueError on bad input."""
        ...

    def ready(self) -> bool:
        """Whether ``score`` can be expected to work now (for /readyz); never raises."""
        ...


@process_cache
def _loaded_handler(model_dir: Path, model_name: str) -> SliceScoringHandler:
    """One model load per (version, process): workers score many studies with it."""
    handler = SliceScoringHandler()
    handler.initialize(model_dir, model_name)
    return handler


def _result_to_batch(result: dict[str, Any], expected: int) -> ScoreBatch:
    probabilities = np.asarray(result["probabilities"], dtype=np.float64).reshape(-1, 2)
    if len(probabilities) != expected:
        raise ScorerUnavailable(
            f"scorer returned {len(probabilities)} probability rows for {expected} slices"
        )
    return ScoreBatch(probabilities, str(result["model_name"]), str(result["model_version"]))


def _error_detail(response: httpx.Response) -> str:
    """The handler's ``{"error": ...}`` (or TorchServe's ``message``), else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)[:500]


class InProcessScorer:
    """Runs :class:`SliceScoringHandler` here, through the same .npy encode/decode path."""

    def __init__(self, model_dir: Path, model_name: str = "slice-cnn") -> None:
        self.model_dir = Path(model_dir).resolve()
        self.model_name = model_name

    def _handler(self) -> SliceScoringHandler:
        return _loaded_handler(self.model_dir, self.model_name)

    def score(self, inputs: NDArray[np.uint8]) -> ScoreBatch:
        (result,) = self._handler().handle_bodies([encode_slices(inputs)])
        return _result_to_batch(result, len(inputs))

    def ready(self) -> bool:
        try:
            self._handler()
        except Exception:
            logger.exception("in-process scorer cannot load %s", self.model_dir)
            return False
        return True


class TorchServeScorer:
    """Scores through TorchServe's inference API.

    Inputs are cut into requests of ``batch_size`` slices and ``concurrency`` of them are kept
    in flight, so TorchServe can merge them (and other clients' requests) into one model call.
    Connection errors and 5xx answers are retried a couple of times with a short backoff, then
    raise :class:`ScorerUnavailable`; a 4xx means the input was wrong and raises ValueError.
    """

    retries = 2
    backoff_s = 0.5
    ping_timeout_s = 5.0

    def __init__(
        self,
        base_url: str,
        model_name: str,
        batch_size: int,
        concurrency: int,
        timeout_s: float,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.batch_size = batch_size
        self.concurrency = concurrency
        # httpx.Client is thread-safe; one pool shared by the request threads.
        self._client = httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TorchServeScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_retries(self, what: str, attempt_once: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return attempt_once()
            except ScorerUnavailable as exc:
                if attempt == self.retries:
                    raise
                delay = self.backoff_s * 2**attempt
                logger.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _post_once(self, body: bytes, expected: int) -> ScoreBatch:
        url = f"{self.base_url}/predictions/{self.model_name}"
        try:
            response = self._client.post(
                url, content=body, headers={"Content-Type": "application/octet-stream"}
            )
        except httpx.ReadTimeout as exc:
            # Not retried: the server may still be working on it; retrying would pile up load.
            raise ScorerUnavailable(f"no answer from {url} within the timeout") from exc
        except httpx.TransportError as exc:
            raise ScorerUnavailable(f"cannot reach {url}: {exc!r}") from exc
        if response.status_code == 404:
            raise ScorerUnavailable(f"model {self.model_name!r} is not registered at {url}")
        if response.status_code >= 500:
            raise ScorerUnavailable(
                f"{url} answered {response.status_code}: {_error_detail(response)}"
            )
        if response.status_code >= 400:
            raise ValueError(
                f"{url} rejected the slices ({response.status_code}): {_error_detail(response)}"
            )
        try:
            result = response.json()
        except ValueError as exc:
            raise ScorerUnavailable(f"{url} answered non-JSON: {response.text[:200]}") from exc
        return _result_to_batch(result, expected)

    def _score_chunk(self, chunk: NDArray[np.uint8]) -> ScoreBatch:
        body = encode_slices(chunk)
        return self._with_retries(
            f"POST /predictions/{self.model_name}", lambda: self._post_once(body, len(chunk))
        )

    def score(self, inputs: NDArray[np.uint8]) -> ScoreBatch:
        # The handler validates too; checking here saves a round trip per bad chunk.
        if inputs.dtype != np.uint8:
            raise ValueError(f"slices must be uint8, got dtype {inputs.dtype}")
        if inputs.ndim != 3:
            raise ValueError(f"slices must be a 3-d (n, S, S) array, got shape {inputs.shape}")
        # No slices still makes one (empty) request: the answer names the model version.
        chunks = [
            inputs[start : start + self.batch_size]
            for start in range(0, max(len(inputs), 1), self.batch_size)
        ]
        with ThreadPoolExecutor(
            max_workers=min(self.concurrency, len(chunks)), thread_name_prefix="scorer"
        ) as pool:
            batches = list(pool.map(self._score_chunk, chunks))
        versions = {(batch.model_name, batch.model_version) for batch in batches}
        if len(versions) != 1:
            raise ScorerUnavailable(f"model changed while scoring one input: {sorted(versions)}")
        return ScoreBatch(
            np.concatenate([batch.probabilities for batch in batches]),
            batches[0].model_name,
            batches[0].model_version,
        )

    def ready(self) -> bool:
        try:
            response = self._client.get(f"{self.base_url}/ping", timeout=self.ping_timeout_s)
            return response.status_code == 200 and response.json().get("status") == "Healthy"
        except Exception:
            return False


def make_scorer(settings: Settings) -> Scorer:
    """TorchServe when ``scorer_url`` is set, else the in-process scorer (embedded mode)."""
    if settings.scorer_url:
        return TorchServeScorer(
            settings.scorer_url,
            settings.scorer_model_name,
            settings.scorer_batch_size,
            settings.scorer_concurrency,
            settings.scorer_timeout_s,
        )
    return InProcessScorer(settings.slice_model_dir, settings.scorer_model_name)
