"""The scorer contract: handler wire format, in-process scorer, and a real TorchServe.

Slice counts stay small: the shipped model runs 3 members x 2 flips per slice on 2 cores.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from services.common.config import Settings, get_settings
from services.inference.artifacts import SliceModel, load_slice_model
from services.inference.handler import (
    SliceScoringHandler,
    decode_slices,
    encode_slices,
    handle,
)
from services.inference.scorer import (
    InProcessScorer,
    ScorerUnavailable,
    TorchServeScorer,
    make_scorer,
)

MODEL_DIR = get_settings().slice_model_dir  # the served version, as TorchServe serves it
VERSION = get_settings().slice_model_version
SIZE = 224


def seeded_slices(n: int, seed: int = 0) -> NDArray[np.uint8]:
    """Smooth random blobs: closer to CT slices than white noise, still deterministic."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, SIZE // 16, SIZE // 16), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2))


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def forged_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


class FakeContext:
    """The slice of ts.context.Context that handle() touches."""

    def __init__(self, model_dir: Path, version: str = VERSION) -> None:
        self.system_properties: dict[str, Any] = {"model_dir": str(model_dir)}
        self.manifest: dict[str, Any] = {
            "model": {"modelName": "slice-cnn", "modelVersion": version}
        }
        self.statuses: dict[int, tuple[int, str]] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)


@pytest.fixture(scope="module")
def slice_model() -> SliceModel:
    return load_slice_model(MODEL_DIR)


@pytest.fixture(scope="module")
def handler() -> SliceScoringHandler:
    loaded = SliceScoringHandler()
    loaded.initialize(MODEL_DIR, "slice-cnn", VERSION)
    return loaded


@pytest.fixture(scope="module")
def slices() -> NDArray[np.uint8]:
    return seeded_slices(6)


@pytest.fixture(scope="module")
def reference(slices: NDArray[np.uint8]) -> NDArray[np.float64]:
    """In-process scorer output, the yardstick for the handler and TorchServe."""
    return InProcessScorer(MODEL_DIR).score(slices).probabilities


# --- wire format and handler, no server ---------------------------------------------------


def test_encode_decode_round_trip_gives_a_writable_copy() -> None:
    array = seeded_slices(3)
    decoded = decode_slices(encode_slices(array), SIZE)
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    fortran = np.asfortranarray(array)
    np.testing.assert_array_equal(decode_slices(npy(fortran)), array)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"definitely not numpy", "not a .npy"),
        (npy(np.zeros((2, SIZE, SIZE), np.float32)), "must be uint8"),
        (npy(np.zeros((2, 64, 64), np.uint8)), "224x224"),
        (npy(np.zeros((SIZE, SIZE), np.uint8)), "3-d"),
        (npy(np.zeros((2, SIZE, 100), np.uint8)), "square"),
        (npy(np.array([None, 1], dtype=object), allow_pickle=True), "must be uint8"),
        (npy(np.zeros((2, SIZE, SIZE), np.uint8))[:-10], "truncated"),
        # A forged header claiming 50 GB must be refused before anything is allocated.
        (forged_header((999_999, SIZE, SIZE)) + bytes(100), "truncated"),
    ],
    ids=["not-npy", "float", "wrong-size", "2d", "not-square", "pickle", "truncated", "forged"],
)
def test_decode_rejects_anything_but_uint8_slices(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_slices(body, SIZE)


def test_handler_batches_requests_and_answers_each(
    handler: SliceScoringHandler, slices: NDArray[np.uint8], reference: NDArray[np.float64]
) -> None:
    results = handler.handle_bodies([encode_slices(slices[:2]), encode_slices(slices[2:3])])
    assert [len(r["probabilities"]) for r in results] == [2, 1]
    assert all(r["model_name"] == "slice-cnn" and r["model_version"] == VERSION for r in results)
    got = np.array(results[0]["probabilities"] + results[1]["probabilities"])
    np.testing.assert_allclose(got, reference[:3], atol=1e-6)
    assert handler.handle_bodies([]) == []
    with pytest.raises(ValueError, match=r"request 1: .*uint8"):
        handler.handle_bodies([encode_slices(slices[:1]), npy(np.zeros((1, SIZE, SIZE)))])


def test_torchserve_entry_point_answers_a_bad_request_alone(
    slices: NDArray[np.uint8], reference: NDArray[np.float64]
) -> None:
    """One client's bad body gets its own 400; the requests batched with it still score."""
    context = FakeContext(MODEL_DIR)
    assert handle(None, context) is None  # TorchServe's load-time call
    data: list[dict[str, Any]] = [
        {"body": bytearray(encode_slices(slices[:1]))},
        {"body": npy(np.zeros((1, 64, 64), np.uint8))},
        {"data": encode_slices(slices[1:2])},
        {"body": {"json": "payload"}},
    ]
    results = handle(data, context)
    assert results is not None and len(results) == 4
    assert sorted(context.statuses) == [1, 3]
    assert context.statuses[1][0] == 400 and "224x224" in context.statuses[1][1]
    assert "error" in results[3]
    got = np.array(results[0]["probabilities"] + results[2]["probabilities"])
    np.testing.assert_allclose(got, reference[:2], atol=1e-6)


def test_handler_refuses_an_archive_whose_version_disagrees() -> None:
    with pytest.raises(ValueError, match="does not match"):
        SliceScoringHandler().initialize(MODEL_DIR, "slice-cnn", "v9")


# --- in-process scorer ----------------------------------------------------------------------


def test_in_process_scorer_matches_the_model(
    slice_model: SliceModel, slices: NDArray[np.uint8]
) -> None:
    scorer = InProcessScorer(MODEL_DIR)
    assert scorer.ready()
    batch = scorer.score(slices[:3])
    assert (batch.model_name, batch.model_version) == ("slice-cnn", VERSION)
    assert batch.probabilities.shape == (3, 2) and batch.probabilities.dtype == np.float64
    expected = slice_model.predict_proba(slices[:3])
    np.testing.assert_allclose(batch.probabilities, expected, atol=1e-9)
    assert scorer.score(slices[:0]).probabilities.shape == (0, 2)
    with pytest.raises(ValueError, match="224x224"):
        scorer.score(np.zeros((1, 32, 32), np.uint8))


def test_in_process_scorer_is_not_ready_without_a_model(tmp_path: Path) -> None:
    assert not InProcessScorer(tmp_path / "missing").ready()


def test_make_scorer_follows_scorer_url() -> None:
    assert isinstance(make_scorer(Settings(scorer_url=None)), InProcessScorer)
    remote = make_scorer(Settings(scorer_url="http://127.0.0.1:1/", scorer_batch_size=7))
    assert isinstance(remote, TorchServeScorer)
    assert (remote.base_url, remote.batch_size) == ("http://127.0.0.1:1", 7)


def test_torchserve_scorer_reports_an_unreachable_server() -> None:
    scorer = TorchServeScorer(f"http://127.0.0.1:{unused_port()}", "slice-cnn", 4, 2, 5.0)
    scorer.backoff_s = 0.01
    assert not scorer.ready()
    with pytest.raises(ScorerUnavailable, match="cannot reach"):
        scorer.score(seeded_slices(2))
    with pytest.raises(ValueError, match="uint8"):
        scorer.score(np.zeros((1, SIZE, SIZE), np.float32))


# --- real TorchServe ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(torchserve_url: str) -> Iterator[TorchServeScorer]:
    with TorchServeScorer(torchserve_url, "slice-cnn", 4, 3, 120.0) as scorer:
        yield scorer


def test_torchserve_scorer_matches_in_process(
    remote: TorchServeScorer, slices: NDArray[np.uint8], reference: NDArray[np.float64]
) -> None:
    assert remote.ready()
    batch = remote.score(slices)
    assert (batch.model_name, batch.model_version) == ("slice-cnn", VERSION)
    np.testing.assert_allclose(batch.probabilities, reference, atol=1e-5)
    assert remote.score(slices[:0]).probabilities.shape == (0, 2)


def test_concurrent_callers_get_their_own_rows_in_order(
    torchserve_url: str, slices: NDArray[np.uint8], reference: NDArray[np.float64]
) -> None:
    """Requests from several callers are merged server-side; answers must not cross over."""
    parts = [slice(0, 3), slice(3, 5), slice(5, 6)]
    with (
        TorchServeScorer(torchserve_url, "slice-cnn", 1, 3, 120.0) as scorer,
        ThreadPoolExecutor(len(parts)) as pool,
    ):
        batches = list(pool.map(lambda part: scorer.score(slices[part]), parts))
    for part, batch in zip(parts, batches, strict=True):
        np.testing.assert_allclose(batch.probabilities, reference[part], atol=1e-5)


def test_torchserve_rejects_bad_slices_with_400(torchserve_url: str) -> None:
    with (
        TorchServeScorer(torchserve_url, "slice-cnn", 4, 1, 30.0) as scorer,
        pytest.raises(ValueError, match=r"\(400\): slices must be 224x224"),
    ):
        scorer.score(np.zeros((2, 64, 64), np.uint8))
    missing = httpx.post(
        f"{torchserve_url}/predictions/no-such-model", content=encode_slices(seeded_slices(1))
    )
    assert missing.status_code == 404


def test_build_mar_command_packs_an_eager_archive_with_batching(tmp_path: Path) -> None:
    import json
    import zipfile

    import yaml
    from typer.testing import CliRunner

    from services.cli.main import app

    result = CliRunner().invoke(app, ["models", "build-mar", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    mar = Path(result.output.strip().splitlines()[-1])
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert manifest["model"]["modelName"] == "slice-cnn"
    assert manifest["model"]["modelVersion"] == VERSION
    assert "modelFile" in manifest["model"]  # eager mode: model file + state dicts
    assert {"member-0.pt", "config.json"} <= names
    assert config["batchSize"] > 1 and config["maxBatchDelay"] > 0
