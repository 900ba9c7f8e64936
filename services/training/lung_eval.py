"""Dice evaluation of :func:`segment_lungs` against expert lung masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from services.preprocess.segmentation import segment_lungs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    """Dice overlap of two boolean masks; two empty masks agree perfectly (1.0)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _read_grey(path: Path) -> NDArray[np.uint8]:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def evaluate_lungs(images_dir: Path, masks_dir: Path) -> dict[str, Any]:
    """Segment every image that has a same-named mask; a mask pixel > 127 is lung.

    Returns ``dice_mean``, ``dice_min``, ``n`` and ``per_image`` (list of {file, dice}).
    """
    per_image: list[dict[str, Any]] = []
    for img_path in sorted(Path(images_dir).iterdir()):
        mask_path = Path(masks_dir) / img_path.name
        if img_path.suffix.lower() not in IMAGE_SUFFIXES or not mask_path.exists():
            continue
        truth = _read_grey(mask_path) > 127
        pred = segment_lungs(_read_grey(img_path))
        per_image.append({"file": img_path.name, "dice": dice(pred, truth)})
    scores = [p["dice"] for p in per_image]
    return {
        "dice_mean": float(np.mean(scores)) if scores else float("nan"),
        "dice_min": float(np.min(scores)) if scores else float("nan"),
        "n": len(scores),
        "per_image": per_image,
    }
