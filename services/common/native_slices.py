"""The native slices of a job: each slice as read (HU for DICOM/NIfTI volumes, the grey image
for PNG/JPEG inputs) at its own resolution, plus its lung mask, packed into one blob.

The preprocess stage writes ``jobs/<id>/native.bin``: for every slice a lossless PNG of its
pixels (HU + 32768 as 16-bit grey, or 8-bit grey) and a PNG of its lung mask, one after the
other; each slice row records its byte ranges (``SliceRecord.info["native"]``). The gateway
reads one slice with one ranged read (``BlobStorage.get_range``), so on S3 a PNG request
downloads that slice only, never the whole study. Windowing happens at request time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

HU_OFFSET = 32768  # int16 HU -> uint16 PNG samples, losslessly
NativeKind = Literal["hu", "gray"]

# Window presets (width, level) in HU, as radiologists name them.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinal": (400.0, 40.0),
}
MASK_RGBA = (0, 200, 255, 90)  # overlay colour of the lung mask (translucent cyan)
# The HU ranges the lung features count (services.preprocess.lung_features), shown until a
# lesion segmenter's masks exist: ground glass -700 <= HU < -300, consolidation -300..100.
DENSITY_RANGES: dict[str, tuple[tuple[float, float], tuple[int, int, int, int]]] = {
    "ggo": ((-700.0, -300.0), (255, 170, 0, 120)),
    "consolidation": ((-300.0, 100.0), (230, 30, 30, 140)),
}


def native_blob_key(job_id: str) -> str:
    return f"jobs/{job_id}/native.bin"


def lesion_maps_key(job_id: str) -> str:
    """Lesion label maps of the kept slices (aligned with slices.npy), one lossless PNG per
    slice packed one after the other; each kept slice's row records its byte range
    (``SliceRecord.info["lesions"]``), so the viewer reads one overlay with one ranged read."""
    return f"jobs/{job_id}/lesions.bin"


def native_lesions_key(job_id: str) -> str:
    """Lesion label maps of every slice as read (npz ``labels``, (N, H, W) uint8: 0 none,
    1 ground glass, 2 consolidation, 3 other lung); HU volumes only."""
    return f"jobs/{job_id}/lesions_native.npz"


@dataclass(frozen=True)
class NativeSlice:
    pixels: NDArray[Any]  # (H, W): int16 HU or uint8 grey
    kind: NativeKind


def _png(image: NDArray[Any]) -> bytes:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise RuntimeError("could not encode a PNG")
    return bytes(encoded.tobytes())


def encode_native(pixels: NDArray[Any]) -> tuple[bytes, NativeKind]:
    """One slice as a lossless PNG: int16 HU (as uint16 + 32768) or 8-bit grey."""
    if pixels.dtype == np.int16:
        shifted = (pixels.astype(np.int32) + HU_OFFSET).astype(np.uint16)
        return _png(shifted), "hu"
    return _png(np.asarray(pixels, dtype=np.uint8)), "gray"


def encode_mask(mask: NDArray[Any]) -> bytes:
    return _png(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8))


def encode_labels(labels: NDArray[Any]) -> bytes:
    return _png(np.asarray(labels, dtype=np.uint8))


def pack_native(
    slices: Sequence[NDArray[Any]],
    masks: Sequence[NDArray[Any] | None],
    lesion_labels: Sequence[NDArray[Any]] | None = None,
    input_crops: dict[int, tuple[int, int, int]] | None = None,
    input_size: int | None = None,
) -> tuple[bytes, list[dict[str, Any]]]:
    """The blob and, per slice, ``{"kind", "rows", "columns", "image": [offset, length],
    "mask": [offset, length] | None, "lesions": [offset, length] | None, "crop": {...} |
    None}`` to store with the slice's row. ``lesions`` is the slice's lesion label map
    (0 none, 1 ground glass, 2 consolidation, 3 other lung) at its own geometry; ``crop``
    (kept slices) is where the model's input was cut: ``{"y0", "x0", "side", "size"}``."""
    parts: list[bytes] = []
    entries: list[dict[str, Any]] = []
    offset = 0

    def add(data: bytes) -> list[int]:
        nonlocal offset
        parts.append(data)
        where = [offset, len(data)]
        offset += len(data)
        return where

    for index, (pixels, mask) in enumerate(zip(slices, masks, strict=True)):
        data, kind = encode_native(pixels)
        entry: dict[str, Any] = {
            "kind": kind,
            "rows": int(pixels.shape[0]),
            "columns": int(pixels.shape[1]),
            "image": add(data),
            "mask": None,
            "lesions": None,
            "crop": None,
        }
        if mask is not None and mask.shape == pixels.shape:
            entry["mask"] = add(encode_mask(mask))
        labels = lesion_labels[index] if lesion_labels is not None else None
        if labels is not None and labels.shape == pixels.shape:
            entry["lesions"] = add(encode_labels(labels))
        crop = (input_crops or {}).get(index)
        if crop is not None and input_size:
            y0, x0, side = crop
            entry["crop"] = {"y0": int(y0), "x0": int(x0), "side": int(side), "size": input_size}
        entries.append(entry)
    return b"".join(parts), entries


def pack_label_maps(maps: NDArray[Any]) -> tuple[bytes, list[list[int]]]:
    """(N, H, W) uint8 label maps as one blob of N PNGs and each one's [offset, length]. PNG:
    lossless, and a label map (mostly 0) deflates to a few KB where the raw row is S*S bytes."""
    parts: list[bytes] = []
    ranges: list[list[int]] = []
    offset = 0
    for labels in np.asarray(maps, dtype=np.uint8):
        data = _png(labels)
        parts.append(data)
        ranges.append([offset, len(data)])
        offset += len(data)
    return b"".join(parts), ranges


def decode_label_map(data: bytes) -> NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2:
        raise ValueError("damaged lesion label map")
    return np.asarray(image, dtype=np.uint8)


def decode_native(data: bytes, kind: NativeKind) -> NativeSlice:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("damaged native slice")
    if kind == "hu":
        return NativeSlice((image.astype(np.int32) - HU_OFFSET).astype(np.int16), "hu")
    return NativeSlice(image.astype(np.uint8), "gray")


def decode_mask(data: bytes) -> NDArray[np.bool_]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("damaged lung mask")
    return np.asarray(image > 0)


def apply_window(hu: NDArray[Any], width: float, level: float) -> NDArray[np.uint8]:
    """``level ± width/2`` HU onto 0..255, clipped (the viewer's and the report's windowing)."""
    low = level - width / 2.0
    scaled = (hu.astype(np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def parse_window(value: str) -> tuple[float, float]:
    """``lung`` | ``mediastinal`` | ``W,L`` (width 1..10000 HU, level -2000..4000 HU)."""
    if value in WINDOWS:
        return WINDOWS[value]
    try:
        width_text, level_text = value.split(",")
        width, level = float(width_text), float(level_text)
    except ValueError:
        raise ValueError(f"window must be lung, mediastinal or W,L; got {value!r}") from None
    if not (1.0 <= width <= 10000.0 and -2000.0 <= level <= 4000.0):
        raise ValueError("window width must be 1..10000 HU and level -2000..4000 HU")
    return width, level


def render_png(native: NativeSlice, window: tuple[float, float]) -> bytes:
    """The slice as 8-bit grey PNG: HU windowed; a grey image is shown as it is."""
    if native.kind == "hu":
        return _png(apply_window(native.pixels, *window))
    return _png(native.pixels)


def mask_overlay_png(mask: NDArray[np.bool_]) -> bytes:
    """RGBA PNG: the mask in ``MASK_RGBA``, transparent elsewhere."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = MASK_RGBA
    # OpenCV writes BGRA: swap so the PNG holds RGBA.
    return _png(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


def density_overlay_png(
    hu: NDArray[Any], lung: NDArray[np.bool_], ranges: dict[str, tuple[float, float]]
) -> bytes:
    """RGBA PNG: lung pixels in each named HU range (``DENSITY_RANGES`` colours, half-open
    ``low <= HU < high``; consolidation includes its upper bound), transparent elsewhere."""
    rgba = np.zeros((*lung.shape, 4), np.uint8)
    for name, (low, high) in ranges.items():
        colour = DENSITY_RANGES[name][1]
        upper = hu <= high if name == "consolidation" else hu < high
        rgba[lung & (hu >= low) & upper] = colour
    return _png(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


# Lesion label colours (RGBA): 1 ground glass amber, 2 consolidation red; 0 and 3 (other
# lung) transparent. The same colours on the model's crop and on the slice as read.
LESION_COLOURS: dict[int, tuple[int, int, int, int]] = {
    1: (255, 191, 0, 150),
    2: (220, 38, 38, 190),
}


def lesion_overlay_png(labels: NDArray[Any]) -> bytes:
    """RGBA PNG of one label map: ground glass and consolidation coloured, rest clear."""
    rgba = np.zeros((*labels.shape, 4), np.uint8)
    for label, colour in LESION_COLOURS.items():
        rgba[labels == label] = colour
    return _png(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


@dataclass(frozen=True)
class InputCrop:
    """Where the model's ``size`` x ``size`` input was cut from the slice as read: the
    square (y0, x0, side), which may reach past the slice's edges (padding)."""

    y0: int
    x0: int
    side: int
    size: int

    @classmethod
    def of(cls, entry: dict[str, Any] | None) -> InputCrop | None:
        if not entry:
            return None
        crop = cls(int(entry["y0"]), int(entry["x0"]), int(entry["side"]), int(entry["size"]))
        return crop if crop.side > 0 and crop.size > 0 else None

    def to_native(self, u: float, v: float) -> tuple[float, float]:
        """Input pixel (column u, row v) -> slice pixel (x, y), pixel centres aligned."""
        scale = self.side / self.size
        return self.x0 + (u + 0.5) * scale - 0.5, self.y0 + (v + 0.5) * scale - 0.5


def input_map_to_native(
    values: NDArray[Any], crop: InputCrop, rows: int, columns: int
) -> NDArray[np.float32]:
    """A map on the model's input (S, S) laid back onto the slice as read ((rows, columns),
    0 outside the crop): the inverse of the crop-and-resize of preprocessing, so a hot spot
    of the input lands on the tissue it came from."""
    square = cv2.resize(
        np.asarray(values, dtype=np.float32), (crop.side, crop.side),
        interpolation=cv2.INTER_LINEAR,
    )  # fmt: skip
    out = np.zeros((rows, columns), np.float32)
    iy0, ix0 = max(0, crop.y0), max(0, crop.x0)
    iy1, ix1 = min(rows, crop.y0 + crop.side), min(columns, crop.x0 + crop.side)
    if iy1 > iy0 and ix1 > ix0:
        out[iy0:iy1, ix0:ix1] = square[iy0 - crop.y0 : iy1 - crop.y0, ix0 - crop.x0 : ix1 - crop.x0]
    return out


GRADCAM_MIN = 0.2  # heat below this is left clear, so the slice stays readable under it


def gradcam_overlay_png(heat: NDArray[Any]) -> bytes:
    """RGBA PNG of a [0, 1] Grad-CAM map: JET colours, opacity growing with the heat,
    transparent below ``GRADCAM_MIN``."""
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = np.where(heat >= GRADCAM_MIN, np.rint(60 + 140 * heat), 0).astype(np.uint8)
    return _png(np.dstack([bgr, alpha]))  # OpenCV writes BGRA as an RGBA PNG


def gradcam_key(job_id: str, slice_index: int) -> str:
    """The raw Grad-CAM map of a slice's input (8-bit grey PNG, 0..255 = heat 0..1)."""
    return f"jobs/{job_id}/heatmaps/cam-{slice_index:04d}.png"
