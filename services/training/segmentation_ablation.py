"""Single-image lung segmentation for a slice model: Otsu (as v1 was trained) or FOV-aware.

Scores the slice model's inputs prepared both ways on

* UCSD val (the selection set): patient AUC of the mean slice probability, and
* real-ct-slices ``img512`` (held out of every training and selection): slice AUC with a
  1,000-resample bootstrap CI, reported, never used to choose,

plus the share of images in which each method finds a plausible lung crop. Run::

    python -m services.training.segmentation_ablation --model models/slice-cnn/v1.1 \\
        --data-dir ../shared/data --out cache/segmentation_ablation.json
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.common.config import get_settings
from services.inference.artifacts import load_slice_model
from services.preprocess.pipeline import _plausible_crop, prepare_slice, segment_image
from services.training.metrics import bootstrap_ci, print_and_save, roc_auc
from services.training.slice_data import load_gray_image

METHODS = ("otsu", "fov-aware")


def _prepare(paths: list[Path], size: int, enhancement: str, method: str) -> tuple[Any, float]:
    inputs, found = [], 0
    for path in paths:
        image = load_gray_image(path)
        mask = segment_image(image, method)  # type: ignore[arg-type]
        found += bool(_plausible_crop(mask) and mask.mean() >= 0.02)
        inputs.append(prepare_slice(image, size, enhancement, mask=mask))
    return np.stack(inputs), found / max(len(paths), 1)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def evaluate(model_dir: Path, data_dir: Path) -> dict[str, Any]:
    model = load_slice_model(model_dir)
    ucsd = [r for r in _rows(data_dir / "ucsd-covid-ct" / "labels.csv") if r["split"] == "val"]
    img512 = [
        r for r in _rows(data_dir / "real-ct-slices" / "labels.csv") if r["source"] == "img512"
    ]
    patients = sorted({r["patient_id"] for r in ucsd})
    rows = np.array([patients.index(r["patient_id"]) for r in ucsd])
    y_patient = np.zeros(len(patients), np.int64)
    for r in ucsd:
        y_patient[patients.index(r["patient_id"])] = int(r["label"] == "COVID")
    y_img512: NDArray[np.int64] = np.array([int(r["label"] == "COVID") for r in img512])
    out: dict[str, Any] = {"model": str(model_dir)}
    for method in METHODS:
        x, found_ucsd = _prepare(
            [data_dir / "ucsd-covid-ct" / r["file"] for r in ucsd],
            model.image_size,
            model.enhancement,
            method,
        )
        p = model.predict_proba(x)[:, 1]
        per_patient = np.bincount(rows, p, len(patients)) / np.bincount(rows, None, len(patients))
        x, found_img512 = _prepare(
            [data_dir / "real-ct-slices" / r["file"] for r in img512],
            model.image_size,
            model.enhancement,
            method,
        )
        q = model.predict_proba(x)[:, 1]
        out[method] = {
            "ucsd_val_patient_auc": roc_auc(y_patient, per_patient),
            "ucsd_val_lung_found": round(found_ucsd, 3),
            "img512_auc": roc_auc(y_img512, q),
            "img512_auc_ci95": bootstrap_ci(y_img512, q, roc_auc),
            "img512_lung_found": round(found_img512, 3),
            "img512_mean_p_covid": {
                "COVID": float(q[y_img512 == 1].mean()),
                "NonCOVID": float(q[y_img512 == 0].mean()),
            },
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=get_settings().slice_model_dir)
    parser.add_argument("--data-dir", type=Path, default=get_settings().data_dir)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    report = evaluate(args.model, args.data_dir)
    print_and_save(report, args.out)


if __name__ == "__main__":
    main()
