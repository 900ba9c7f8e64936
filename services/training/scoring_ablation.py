"""What members and flip TTA buy on validation: the slice model scored four ways.

The issue's rule: if members x TTA cost more than they give on validation, drop them. This
scores the shipped slice model's members with and without the mirror, on

* UCSD val (the v1 selection set: optimistic, but the only set v1 was made for), patient
  AUC of the mean slice probability, and
* the COVID-CT-MD infected-slice AUC (P002 infected slices vs every kept slice of cap002 and
  normal001, the ``series`` path of :mod:`services.training.realct_eval`),

and reports each variant's cost in forward passes per slice. Run::

    python -m services.training.scoring_ablation --model models/slice-cnn/v1 \
        --data-dir ../shared/data --out cache/scoring_ablation.json
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
from services.inference.artifacts import SliceModel, load_slice_model
from services.inference.predict import predict_proba
from services.preprocess.pipeline import PreprocessOptions, preprocess_study
from services.preprocess.readers import read_study
from services.training.metrics import print_and_save, roc_auc
from services.training.realct_eval import _infected
from services.training.slice_data import prepare_images, read_labels_csv


def member_scores(model: SliceModel, x: NDArray[np.uint8]) -> dict[str, NDArray[np.float64]]:
    """Per member: P(COVID) without and with the mirror, shape (members, N)."""
    plain = [predict_proba(m, x, tta=False)[:, 1] for m in model.members]
    flipped = [predict_proba(m, x[:, :, ::-1].copy(), tta=False)[:, 1] for m in model.members]
    return {"plain": np.stack(plain), "flipped": np.stack(flipped)}


def variants(scores: dict[str, NDArray[np.float64]]) -> dict[str, NDArray[np.float64]]:
    plain, flipped = scores["plain"], scores["flipped"]
    both = (plain + flipped) / 2
    return {
        f"{len(plain)}_members_tta": both.mean(0),
        f"{len(plain)}_members_no_tta": plain.mean(0),
        "member_0_tta": both[0],
        "member_0_no_tta": plain[0],
    }


def ucsd_val(model: SliceModel, data_dir: Path, cache: Path) -> dict[str, float | None]:
    root = data_dir / "ucsd-covid-ct"
    items = [i for i in read_labels_csv(root, root / "labels.csv", "ucsd") if i.split == "val"]
    x = prepare_images(items, model.image_size, model.enhancement, cache)
    patients = sorted({i.patient_id for i in items})
    index = {p: k for k, p in enumerate(patients)}
    rows = np.array([index[i.patient_id] for i in items])
    y = np.zeros(len(patients), np.int64)
    for item in items:
        y[index[item.patient_id]] = item.label
    out: dict[str, float | None] = {}
    for name, p in variants(member_scores(model, x)).items():
        per_patient = np.bincount(rows, p, len(patients)) / np.bincount(rows, None, len(patients))
        out[name] = roc_auc(y, per_patient)
    return out


def ctmd_infected(model: SliceModel, data_dir: Path) -> dict[str, float | None]:
    root = data_dir / "covid-ct-md"
    infected = _infected(root)
    ys: list[NDArray[np.int64]] = []
    per_variant: dict[str, list[NDArray[np.float64]]] = {}
    with (root / "studies.csv").open(newline="") as handle:
        studies = list(csv.DictReader(handle))
    for row in studies:
        study = read_study(root / row["study"], get_settings())
        locs = np.array([info.get("slice_location") for info in study.slice_info], np.float64)
        rank = np.empty(len(locs), np.int64)
        rank[np.argsort(locs, kind="stable")] = np.arange(len(locs))
        options = PreprocessOptions(size=model.image_size, enhancement=model.enhancement)
        prepared = preprocess_study(study, options)
        flags = np.array([int(r) in infected.get(row["study"], set()) for r in rank[prepared.kept]])
        keep = flags if row["diagnosis"] == "COVID" else np.ones(len(flags), bool)
        ys.append(np.full(int(keep.sum()), int(row["diagnosis"] == "COVID")))
        for name, p in variants(member_scores(model, prepared.inputs)).items():
            per_variant.setdefault(name, []).append(p[keep])
    y = np.concatenate(ys)
    return {name: roc_auc(y, np.concatenate(ps)) for name, ps in per_variant.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/slice-cnn/v1"))
    parser.add_argument("--data-dir", type=Path, default=get_settings().data_dir)
    parser.add_argument("--cache", type=Path, default=Path("cache"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_slice_model(args.model)
    members = len(model.members)
    report: dict[str, Any] = {
        "model": str(args.model),
        "forward_passes_per_slice": {
            f"{members}_members_tta": 2 * members,
            f"{members}_members_no_tta": members,
            "member_0_tta": 2,
            "member_0_no_tta": 1,
        },
        "ucsd_val_patient_auc": ucsd_val(model, args.data_dir, args.cache),
        "ctmd_infected_slice_auc": ctmd_infected(model, args.data_dir),
    }
    print_and_save(report, args.out)


if __name__ == "__main__":
    main()
