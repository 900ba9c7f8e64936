"""Contrast enhancement of 8-bit grey slices (as in the original project: HE, CLAHE, both)."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from services.preprocess.types import Gray8

Enhancement = Literal["none", "he", "clahe", "he+clahe"]
ENHANCEMENTS: tuple[Enhancement, ...] = ("none", "he", "clahe", "he+clahe")


def _clahe(image: Gray8, clip_limit: float, tile_grid: int) -> Gray8:
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    return np.asarray(clahe.apply(image), dtype=np.uint8)


def enhance(
    image: Gray8, method: Enhancement, clip_limit: float = 2.0, tile_grid: int = 8
) -> Gray8:
    """Return an enhanced copy of ``image``; "he+clahe" is HE followed by CLAHE."""
    if method not in ENHANCEMENTS:
        raise ValueError(f"unknown enhancement {method!r}; expected one of {ENHANCEMENTS}")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if method == "none":
        return image.copy()
    if method == "he":
        return np.asarray(cv2.equalizeHist(image), dtype=np.uint8)
    if method == "clahe":
        return _clahe(image, clip_limit, tile_grid)
    return _clahe(np.asarray(cv2.equalizeHist(image), dtype=np.uint8), clip_limit, tile_grid)
