"""Contrast enhancement, the contrast gate and near-duplicate removal."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from services.preprocess.dedup import find_near_duplicates, hash_image
from services.preprocess.enhance import ENHANCEMENTS, enhance
from services.preprocess.gate import is_high_contrast
from tests.support.ctmd import load_lung_windowed


def low_contrast(seed: int = 0) -> NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    smooth = cv2.GaussianBlur(rng.normal(120, 10, (256, 256)).astype(np.float32), (0, 0), 3)
    return np.clip(smooth + np.linspace(-20, 20, 256)[None, :], 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ENHANCEMENTS)
def test_enhance_keeps_dtype_and_shape(method: str) -> None:
    img = low_contrast()[:200, :]
    out = enhance(img, method)  # type: ignore[arg-type]
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert out is not img


def test_enhance_none_is_identity() -> None:
    img = low_contrast()
    assert np.array_equal(enhance(img, "none"), img)


def test_he_flattens_histogram() -> None:
    img = low_contrast()
    out = enhance(img, "he")
    uniform = np.linspace(0, 1, 256)
    cdf_in = np.cumsum(np.bincount(img.ravel(), minlength=256)) / img.size
    cdf_out = np.cumsum(np.bincount(out.ravel(), minlength=256)) / out.size
    assert np.abs(cdf_out - uniform).max() < 0.05 < np.abs(cdf_in - uniform).max()
    assert out.max() - out.min() > 240


def test_he_clahe_is_clahe_of_he() -> None:
    img = low_contrast()
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    assert np.array_equal(enhance(img, "clahe"), clahe.apply(img))
    assert np.array_equal(enhance(img, "he+clahe"), clahe.apply(cv2.equalizeHist(img)))
    assert np.array_equal(enhance(img, "he+clahe"), enhance(enhance(img, "he"), "clahe"))


def test_enhance_rejects_unknown_method() -> None:
    with pytest.raises(ValueError):
        enhance(low_contrast(), "gamma")  # type: ignore[arg-type]


@pytest.mark.parametrize(("n_max", "expected"), [(999, False), (1000, False), (1001, True)])
def test_gate_boundary(n_max: int, expected: bool) -> None:
    img = np.full((100, 100), 50, np.uint8)
    img.ravel()[:n_max] = 200  # the image maximum need not be 255
    assert is_high_contrast(img) is expected


def test_gate_min_pixels_parameter() -> None:
    img = np.zeros((10, 10), np.uint8)
    img[0, :6] = 255
    assert is_high_contrast(img, min_pixels=5)
    assert not is_high_contrast(img, min_pixels=6)
    assert not is_high_contrast(np.zeros((0, 0), np.uint8))


def structured(seed: int) -> NDArray[np.uint8]:
    """Image with real structure (random blurred ellipses): phash is stable under noise only
    for images that have content, like CT slices."""
    rng = np.random.default_rng(seed)
    img = np.full((256, 256), 30, np.uint8)
    for _ in range(12):
        centre = (int(rng.integers(20, 236)), int(rng.integers(20, 236)))
        axes = (int(rng.integers(10, 60)), int(rng.integers(10, 60)))
        grey = int(rng.integers(60, 250))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, grey, -1)
    return np.asarray(cv2.GaussianBlur(img, (0, 0), 1.5), dtype=np.uint8)


def jpeg_copy(img: NDArray[np.uint8], quality: int = 75) -> NDArray[np.uint8]:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("L"))


def noisy_copy(img: NDArray[np.uint8], seed: int = 0) -> NDArray[np.uint8]:
    noise = np.random.default_rng(seed).normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def test_hash_image_type() -> None:
    h = hash_image(low_contrast())
    assert isinstance(h, imagehash.ImageHash)
    assert h - hash_image(low_contrast()) == 0


def test_dedup_keeps_first_of_a_run() -> None:
    a, b = structured(1), structured(2)
    drops = find_near_duplicates([a, a, noisy_copy(a), jpeg_copy(a), b, b])
    assert [(d, k) for d, k, _ in drops] == [(1, 0), (2, 0), (3, 0), (5, 4)]
    assert drops[0][2] == 0
    assert find_near_duplicates([]) == []


@pytest.mark.data
def test_dedup_on_real_series(covid_series: Path) -> None:
    vol = load_lung_windowed(covid_series)
    originals = list(vol)
    assert find_near_duplicates(originals) == []  # distinct adjacent 2 mm slices all kept

    # Insert an exact, a noisy and a JPEG copy right after their originals.
    copies = {
        30: originals[30].copy(),
        70: noisy_copy(originals[70]),
        100: jpeg_copy(originals[100]),
    }
    series: list[NDArray[np.uint8]] = []
    inserted: list[tuple[int, int]] = []
    for i, img in enumerate(originals):
        series.append(img)
        if i in copies:
            series.append(copies[i])
            inserted.append((len(series) - 1, len(series) - 2))
    drops = find_near_duplicates(series)
    assert [(d, k) for d, k, _ in drops] == inserted
