"""Test helper: read a COVID-CT-MD series with pydicom directly and lung-window it (W1500
L-600), independent of the production reader."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray


@lru_cache(maxsize=2)
def load_lung_windowed(series_dir: Path) -> NDArray[np.uint8]:
    """(N, H, W) uint8 slices sorted by SliceLocation, HU windowed to W1500 L-600."""
    datasets = [pydicom.dcmread(p) for p in sorted(series_dir.glob("*.dcm"))]
    datasets.sort(key=lambda d: float(d.SliceLocation))
    lo, width = -600.0 - 750.0, 1500.0
    slices = []
    for d in datasets:
        hu = d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        slices.append(np.clip((hu - lo) / width * 255.0, 0, 255).round().astype(np.uint8))
    return np.stack(slices)
