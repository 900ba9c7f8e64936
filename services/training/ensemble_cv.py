"""Train the patient-level ensemble on out-of-fold slice probabilities.

Why cross-fitting: the shipped CNN has seen every UCSD train slice, so its probabilities on
them are optimistic. Each UCSD train patient instead gets probabilities from a fold CNN that
never saw that patient. UCSD val patients and the COVID-CT-MD series are held out from CNN
training, so the shipped CNN scores them. The ensemble is then cross-validated by patient.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import StratifiedGroupKFold

from services.common.config import Settings, get_settings
from services.ensemble.model import SoftVoteEnsemble
from services.inference.artifacts import SliceModel, load_slice_model
from services.inference.predict import predict_proba
from services.preprocess.pipeline import PreprocessOptions, preprocess_study
from services.preprocess.readers import natural_key, read_study
from services.training.ensemble import cross_validate_patients, fit_final
from services.training.slice_cnn import TrainConfig, fit_slice_cnn
from services.training.slice_data import LabelledImage, prepare_images
from services.training.slice_experiment import labels_of, ucsd_items


def cross_fit_slice_probs(
    items: list[LabelledImage],
    slice_model: SliceModel,
    folds: int,
    epochs: int,
    cache_dir: Path,
    seed: int = 0,
) -> NDArray[np.float64]:
    """P(COVID) for each item from a CNN trained on the other patient folds (cached)."""
    key = hashlib.sha256(
        json.dumps(
            [
                slice_model.version,
                slice_model.enhancement,
                slice_model.image_size,
                folds,
                epochs,
                seed,
                [str(i.path) for i in items],
            ]
        ).encode()
    ).hexdigest()[:16]
    cache_file = cache_dir / f"oof-{key}.npy"
    if cache_file.exists():
        return np.load(cache_file)
    x = prepare_images(
        items,
        slice_model.image_size,
        slice_model.enhancement,
        cache_dir,
        segmentation=slice_model.image_segmentation,
    )
    y = labels_of(items)
    groups = np.array([i.patient_id for i in items])
    oof = np.full(len(items), np.nan)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train_idx, test_idx) in enumerate(splitter.split(x, y, groups)):
        config = TrainConfig(
            image_size=slice_model.image_size,
            enhancement=slice_model.enhancement,
            epochs=epochs,
            seed=seed + fold,
        )
        result = fit_slice_cnn(x[train_idx], y[train_idx], config)
        oof[test_idx] = predict_proba(result.model, x[test_idx], tta=slice_model.tta)[:, 1]
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache_file, oof)
    return oof


@dataclass(frozen=True)
class SeriesScores:
    study: str
    diagnosis: str
    p_covid: NDArray[np.float64]  # per kept slice, in slice order
    kept: list[int]  # indices of those slices in the series


def ctmd_sequences(data_dir: Path, slice_model: SliceModel) -> list[SeriesScores]:
    """Per-slice P(COVID) of the shared COVID-CT-MD series through the full pipeline."""
    root = data_dir / "covid-ct-md"
    out = []
    with (root / "studies.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            study = read_study(root / row["study"], get_settings())
            prepared = preprocess_study(
                study,
                PreprocessOptions(size=slice_model.image_size, enhancement=slice_model.enhancement),
            )
            probs = slice_model.predict_proba(prepared.inputs)[:, 1]
            out.append(SeriesScores(row["study"], row["diagnosis"], probs, prepared.kept))
    return out


def train_ensemble_model(
    settings: Settings,
    version: str,
    folds: int = 5,
    fold_epochs: int = 6,
    cache_dir: Path = Path("cache"),
    command: str = "",
    ensemble_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    slice_model = load_slice_model(settings.slice_model_dir)
    items = ucsd_items(settings.data_dir)
    train = [i for i in items if i.split == "train"]
    val = [i for i in items if i.split == "val"]

    slice_p: dict[Path, float] = {}
    oof = cross_fit_slice_probs(train, slice_model, folds, fold_epochs, cache_dir)
    slice_p.update({item.path: float(p) for item, p in zip(train, oof, strict=True)})
    x_val = prepare_images(
        val,
        slice_model.image_size,
        slice_model.enhancement,
        cache_dir,
        segmentation=slice_model.image_segmentation,
    )
    val_p = slice_model.predict_proba(x_val)[:, 1]
    slice_p.update({item.path: float(p) for item, p in zip(val, val_p, strict=True)})

    # One sequence per patient, slices in natural file-name order.
    by_patient: dict[str, list[LabelledImage]] = {}
    for item in items:
        by_patient.setdefault(item.patient_id, []).append(item)
    sequences: list[NDArray[np.float64]] = []
    labels, groups, sources = [], [], []
    for patient, patient_items in sorted(by_patient.items()):
        patient_items.sort(key=lambda i: natural_key(i.path.name))
        sequences.append(np.array([slice_p[i.path] for i in patient_items]))
        labels.append(patient_items[0].label)
        groups.append(patient)
        sources.append(f"ucsd-{patient_items[0].split}")
    ctmd = ctmd_sequences(settings.data_dir, slice_model)
    for series in ctmd:
        sequences.append(series.p_covid)
        labels.append(int(series.diagnosis == "COVID"))
        groups.append(f"covid-ct-md:{series.study}")
        sources.append("covid-ct-md")

    # UCSD NonCOVID patients have more figures per patient than COVID ones (2.2 vs 1.5
    # slices on train): a slice-count feature would learn that artefact, not the disease.
    params = {"include_slice_count": False} | (ensemble_params or {})
    cv = cross_validate_patients(sequences, labels, groups, n_splits=5, random_state=0, **params)
    model: SoftVoteEnsemble = fit_final(sequences, labels, random_state=0, **params)
    out_dir = settings.models_dir / "ensemble" / version
    model.save(out_dir)

    oof_p = np.asarray(cv["oof_proba"])
    y = np.asarray(labels)
    per_source = {}
    for source in sorted(set(sources)):
        mask = np.array([s == source for s in sources])
        per_source[source] = {
            "patients": int(mask.sum()),
            "covid": int(y[mask].sum()),
            "accuracy": float(((oof_p[mask] >= 0.5) == y[mask]).mean()),
        }
    report = {
        "version": version,
        "slice_model_version": slice_model.version,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cnn_cross_fitting": {
            "folds": folds,
            "epochs": fold_epochs,
            "ucsd_train_slices": len(train),
        },
        "ensemble_params": params,
        "patients": len(sequences),
        "covid_patients": int(y.sum()),
        "cv": cv["metrics"],
        "cv_ci95": cv["ci95"],
        "cv_folds": cv["folds"],
        "per_source_oof": per_source,
        "covid_ct_md_oof": [
            {"study": g, "label": int(lbl), "p_covid": float(p)}
            for g, lbl, p, s in zip(groups, labels, oof_p, sources, strict=True)
            if s == "covid-ct-md"
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "metrics.json").write_text(
        json.dumps(report, indent=2, default=_json_default) + "\n"
    )
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
