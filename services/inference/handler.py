"""Slice scoring handler: the one code path behind TorchServe and the in-process scorer.

TorchServe loads the module-level :func:`handle` (through the shim that ``mar.py`` packs into
the .mar); :class:`~services.inference.scorer.InProcessScorer` calls
:class:`SliceScoringHandler` directly with the same ``.npy`` request bodies, so both scorers
decode, validate, batch and answer identically.

Wire format: a request body is a ``.npy`` file (``np.save``, no pickles) holding an
``(n, S, S)`` uint8 array of prepared slices; the answer is
``{"probabilities": [[p_noncovid, p_covid], ...], "model_name": ..., "model_version": ...}``.
The ``ts`` package is never imported here: in-process use runs without TorchServe.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from services.inference.artifacts import SliceModel, load_slice_model

logger = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"


def encode_slices(slices: NDArray[np.uint8]) -> bytes:
    """(n, S, S) uint8 slices -> ``.npy`` bytes, the request body both scorers send."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(slices), allow_pickle=False)
    return buffer.getvalue()


def decode_slices(body: bytes | bytearray, image_size: int | None = None) -> NDArray[np.uint8]:
    """``.npy`` bytes -> (n, S, S) uint8 slices; ValueError on anything else.

    The header is checked before any array memory is allocated, so a forged shape cannot make
    the worker allocate gigabytes; the payload length must match the header exactly.
    """
    if not isinstance(body, bytes | bytearray):
        raise ValueError(f"request body must be .npy bytes, got {type(body).__name__}")
    data = bytes(body)
    if not data.startswith(NPY_MAGIC):
        raise ValueError("request body is not a .npy file (missing the NUMPY magic)")
    stream = io.BytesIO(data)
    try:
        major, minor = np.lib.format.read_magic(stream)
        if (major, minor) == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif (major, minor) in {(2, 0), (3, 0)}:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {major}.{minor}")
    except ValueError as exc:
        raise ValueError(f"request body is not a valid .npy file: {exc}") from exc
    if dtype != np.dtype(np.uint8):
        raise ValueError(f"slices must be uint8, got dtype {dtype}")
    if len(shape) != 3:
        raise ValueError(f"slices must be a 3-d (n, S, S) array, got shape {shape}")
    if shape[1] != shape[2]:
        raise ValueError(f"slices must be square, got shape {shape}")
    if image_size is not None and shape[1:] != (image_size, image_size):
        raise ValueError(
            f"slices must be {image_size}x{image_size} for this model, got shape {shape}"
        )
    payload = data[stream.tell() :]
    expected = int(np.prod(shape))
    if len(payload) != expected:
        raise ValueError(
            f"truncated or padded .npy: header says {expected} bytes, body has {len(payload)}"
        )
    flat = np.frombuffer(payload, dtype=np.uint8)
    # A copy makes the array writable (torch.from_numpy warns on read-only buffers).
    return flat.reshape(shape, order="F" if fortran_order else "C").copy(order="C")


class _Context(Protocol):
    """The part of TorchServe's ``ts.context.Context`` the handler uses."""

    system_properties: dict[str, Any]
    manifest: dict[str, Any]

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None: ...


class SliceScoringHandler:
    """Loads a slice-CNN version once and scores batches of ``.npy`` request bodies."""

    def __init__(self) -> None:
        self.model: SliceModel | None = None
        self.model_name = ""
        self.model_version = ""
        self.device = "cpu"

    @property
    def initialized(self) -> bool:
        return self.model is not None

    def initialize(
        self,
        model_dir: Path,
        model_name: str,
        model_version: str | None = None,
        device: str = "cpu",
    ) -> None:
        """Load ``config.json`` + members from ``model_dir``.

        ``model_version`` (TorchServe's manifest version) must match ``config.json``: a
        mismatch means a mis-built archive, and reports would name the wrong model.
        """
        started = time.perf_counter()
        model = load_slice_model(Path(model_dir))
        if model_version is not None and model_version != model.version:
            raise ValueError(
                f"archive version {model_version!r} does not match config.json "
                f"version {model.version!r} in {model_dir}"
            )
        for member in model.members:
            member.to(device)
        self.model = model
        self.model_name = model_name
        self.model_version = model.version
        self.device = device
        logger.info(
            "loaded %s %s (%d members) from %s on %s in %.2f s; torch threads: %d",
            model_name,
            model.version,
            len(model.members),
            model_dir,
            device,
            time.perf_counter() - started,
            torch.get_num_threads(),
        )

    def _require_model(self) -> SliceModel:
        if self.model is None:
            raise RuntimeError("SliceScoringHandler.initialize() was not called")
        return self.model

    def decode(self, body: bytes | bytearray) -> NDArray[np.uint8]:
        """Validate one request body against this model's image size."""
        return decode_slices(body, self._require_model().image_size)

    def predict(self, batches: Sequence[NDArray[np.uint8]]) -> list[dict[str, Any]]:
        """Score all requests' slices in one model call; one result per request, in order."""
        model = self._require_model()
        if not batches:
            return []
        counts = [len(batch) for batch in batches]
        if sum(counts) == 0:
            probabilities = np.zeros((0, 2))
        else:
            probabilities = model.predict_proba(np.concatenate(batches), device=self.device)
        results = []
        for part in np.split(probabilities, np.cumsum(counts)[:-1]):
            results.append(
                {
                    "probabilities": part.tolist(),
                    "model_name": self.model_name,
                    "model_version": self.model_version,
                }
            )
        return results

    def handle_bodies(self, bodies: Sequence[bytes | bytearray]) -> list[dict[str, Any]]:
        """Decode and score request bodies; ValueError names the first invalid one."""
        batches = []
        for index, body in enumerate(bodies):
            try:
                batches.append(self.decode(body))
            except ValueError as exc:
                raise ValueError(f"request {index}: {exc}") from exc
        return self.predict(batches)

    def handle_torchserve(
        self, bodies: Sequence[object], context: _Context
    ) -> list[dict[str, Any]]:
        """Like :meth:`handle_bodies`, but an invalid request gets its own 400.

        TorchServe batches requests from different clients together: one bad body must not
        fail the others, so it is answered alone and the valid ones are still scored.
        """
        valid: list[tuple[int, NDArray[np.uint8]]] = []
        results: list[dict[str, Any]] = [{} for _ in bodies]
        for index, body in enumerate(bodies):
            try:
                if not isinstance(body, bytes | bytearray):
                    raise ValueError(
                        "request body must be .npy bytes sent as application/octet-stream, "
                        f"got {type(body).__name__}"
                    )
                valid.append((index, self.decode(body)))
            except ValueError as exc:
                context.set_response_status(400, str(exc), index)
                results[index] = {"error": str(exc)}
        started = time.perf_counter()
        scored = self.predict([batch for _, batch in valid])
        logger.info(
            "scored %d slices from %d of %d requests in %.2f s",
            sum(len(batch) for _, batch in valid),
            len(valid),
            len(bodies),
            time.perf_counter() - started,
        )
        for (index, _), result in zip(valid, scored, strict=True):
            results[index] = result
        return results


_handler = SliceScoringHandler()


def select_device(properties: dict[str, Any]) -> str:
    """The GPU TorchServe assigned to this worker (``gpu_id``), when CUDA is usable; else
    the CPU, so the same archive serves on both."""
    gpu_id = properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return f"cuda:{int(gpu_id)}"
    return "cpu"


def handle(data: list[dict[str, Any]] | None, context: _Context) -> list[dict[str, Any]] | None:
    """TorchServe entry point; loads the model lazily, once per worker process.

    TorchServe calls ``handle(None, context)`` once at load time, then once per batch with
    one dict per request (the payload under ``"body"`` or ``"data"``).
    """
    if not _handler.initialized:
        properties = context.system_properties
        manifest_model = context.manifest.get("model", {})
        _handler.initialize(
            Path(properties["model_dir"]),
            manifest_model.get("modelName", "slice-cnn"),
            manifest_model.get("modelVersion"),
            device=select_device(properties),
        )
    if data is None:
        return None
    bodies = [request.get("body") if "body" in request else request.get("data") for request in data]
    return _handler.handle_torchserve(bodies, context)
