"""Metrics of the shipped models on labelled slices or labelled studies."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import StudyError
from services.diagnosis import diagnose_path
from services.inference.stage import loaded_slice_model
from services.training.metrics import binary_metrics
from services.training.slice_data import prepare_images, read_labels_csv


def evaluate_slice_set(root: Path, labels: Path, split: str | None = None) -> dict[str, Any]:
    """Slice-level metrics of the CNN (threshold 0.5) on ``file,label`` rows."""
    items = read_labels_csv(root, labels, source=str(root))
    if split is not None:
        items = [i for i in items if i.split == split]
    if not items:
        raise ValueError(f"{labels}: no rows" + (f" in split {split!r}" if split else ""))
    model = loaded_slice_model()
    x = prepare_images(
        items, model.image_size, model.enhancement, segmentation=model.image_segmentation
    )
    p_covid = model.predict_proba(x)[:, 1]
    y = np.array([i.label for i in items])
    return dict(binary_metrics(y, p_covid, threshold=model.threshold))


def evaluate_study_set(root: Path, labels: Path) -> dict[str, Any]:
    """Patient-level metrics of the full pipeline on ``study,diagnosis`` rows.

    ``COVID`` is positive, every other diagnosis negative. A study that cannot be read is
    listed with its error and counts as a wrong answer (probability None is not averaged).
    """
    rows = []
    with labels.open(newline="") as handle:
        for row in csv.DictReader(handle):
            study, diagnosis = row["study"].strip(), row["diagnosis"].strip()
            entry: dict[str, Any] = {"study": study, "diagnosis": diagnosis}
            try:
                result, _ = diagnose_path(root / study)
                entry |= {"label": result.label, "probability": result.probabilities["COVID"]}
            except StudyError as error:
                entry |= {"label": "error", "probability": None, "error": error.as_dict()}
            rows.append(entry)
    if not rows:
        raise ValueError(f"{labels}: no studies")
    y = np.array([int(r["diagnosis"] == "COVID") for r in rows])
    # An unreadable study gets the opposite of its truth: failures must not flatter metrics.
    p = np.array(
        [
            r["probability"] if r["probability"] is not None else 1.0 - t
            for r, t in zip(rows, y, strict=True)
        ]
    )
    metrics = dict(binary_metrics(y, p))
    metrics["studies"] = rows
    return metrics
