"""Labelled slice sets for training and evaluation (UCSD COVID-CT, SARS-CoV-2 CT, ...).

Every image is read like a served single image (``load_gray_image``) and goes through
``prepare_slice``, the same function that prepares served slices.
Prepared arrays are cached on disk (``cache/``, never committed) keyed by file list and options.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from services.preprocess.pipeline import prepare_slice
from services.preprocess.readers import load_gray_image

LABELS = {"NonCOVID": 0, "COVID": 1}
PREP_VERSION = "prep-1"  # bump when prepare_slice changes behaviour


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int  # 1 = COVID
    patient_id: str
    split: str
    source: str


def read_labels_csv(root: Path, labels_csv: Path, source: str) -> list[LabelledImage]:
    """CSV ``file,label[,patient_id,split]``; ``file`` relative to ``root``."""
    items = []
    with labels_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            label = row["label"].strip()
            if label not in LABELS:
                raise ValueError(f"{labels_csv}: unknown label {label!r} for {row['file']}")
            items.append(
                LabelledImage(
                    path=root / row["file"],
                    label=LABELS[label],
                    # Without patient ids every image is its own patient (the only honest unit).
                    patient_id=(row.get("patient_id") or f"{source}:{row['file']}").strip(),
                    split=(row.get("split") or "").strip(),
                    source=source,
                )
            )
    return items


def prepare_images(
    items: list[LabelledImage],
    size: int,
    enhancement: str,
    cache_dir: Path | None = None,
    segmentation: str = "otsu",
) -> NDArray[np.uint8]:
    """(N, size, size) prepared slices, cached when ``cache_dir`` is given."""
    paths = [str(item.path) for item in items]
    key = hashlib.sha256(
        json.dumps([PREP_VERSION, size, enhancement, segmentation, paths]).encode()
    ).hexdigest()[:16]
    cache_file = cache_dir / f"slices-{key}.npy" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        return np.load(cache_file)
    prepared = np.stack(
        [
            prepare_slice(
                load_gray_image(item.path),
                size,
                enhancement,
                segmentation=segmentation,  # type: ignore[arg-type]  # from config.json
            )
            for item in items
        ]
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache_file, prepared)
    return prepared
