"""Hounsfield units to 8-bit grey: the lung window every CT slice is shown (and scored) in."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from services.preprocess.types import Gray8

LUNG_CENTER = -600.0
LUNG_WIDTH = 1500.0


def window_to_uint8(hu: ArrayLike, center: float = LUNG_CENTER, width: float = LUNG_WIDTH) -> Gray8:
    """Map ``center ± width/2`` HU linearly onto 0..255, clipping outside (W 1500 L −600)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / width)
    # NaN (seen in float NIfTI volumes outside the field of view) is shown as air.
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
