"""The original project's contrast gate for pre-windowed (saturated) images."""

from __future__ import annotations

import numpy as np

from services.preprocess.types import Gray8

MIN_SATURATED_PIXELS = 1000


def is_high_contrast(image: Gray8, min_pixels: int = MIN_SATURATED_PIXELS) -> bool:
    """True when more than ``min_pixels`` pixels sit at the image's maximum grey value.

    Kept exactly as the original rule (absolute pixel count, not scaled to image size): a
    large saturated area at the top grey level marks an image windowed/clipped upstream.
    """
    if image.size == 0:
        return False
    return int(np.count_nonzero(image == image.max())) > min_pixels
