"""Slice-CNN training runs on the shared data: data assembly, enhancement choice, artefacts.

UCSD COVID-CT ``train`` is the training set and its ``val`` the only selection set. Extra
sources (SARS-CoV-2 CT) are optional and mixed in with a fixed per-epoch share.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from services.inference.artifacts import load_slice_model, save_slice_model
from services.inference.model import SliceCNNConfig, build_model
from services.training.metrics import binary_metrics, bootstrap_cis
from services.training.slice_cnn import TrainConfig, fit_slice_cnn
from services.training.slice_data import LabelledImage, prepare_images, read_labels_csv

log = logging.getLogger(__name__)

EXTRA_SOURCES = ("sarscov2-ct",)


def ucsd_items(data_dir: Path) -> list[LabelledImage]:
    root = data_dir / "ucsd-covid-ct"
    return read_labels_csv(root, root / "labels.csv", source="ucsd-covid-ct")


def extra_items(data_dir: Path, source: str) -> list[LabelledImage]:
    if source not in EXTRA_SOURCES:
        raise ValueError(f"unknown extra source {source!r}; known: {EXTRA_SOURCES}")
    root = data_dir / source
    return read_labels_csv(root, root / "labels.csv", source=source)


def labels_of(items: list[LabelledImage]) -> NDArray[np.int64]:
    return np.array([item.label for item in items], dtype=np.int64)


@torch.inference_mode()
def frozen_features(x: NDArray[np.uint8], image_size: int) -> NDArray[np.float32]:
    """ImageNet EfficientNet-Lite0 pooled features: a cheap probe of input quality."""
    model = build_model(SliceCNNConfig(image_size=image_size), pretrained=True).eval()
    feats = []
    for start in range(0, len(x), 64):
        batch = torch.from_numpy(x[start : start + 64]).unsqueeze(1)
        fmap = model.backbone.extract_features(model.normalise(batch))
        feats.append(fmap.mean(dim=(2, 3)).numpy())
    return np.concatenate(feats)


def probe_enhancements(
    data_dir: Path,
    methods: tuple[str, ...] = ("none", "he", "clahe", "he+clahe"),
    image_size: int = 224,
    cache_dir: Path | None = None,
) -> dict[str, float]:
    """Val ROC AUC of a logistic regression on frozen ImageNet features, per enhancement.

    Fine-tuning a CNN per option costs ~15 CPU-minutes each; this linear probe ranks the
    options on UCSD val in about a minute and is what picks the default enhancement.
    """
    items = ucsd_items(data_dir)
    train = [i for i in items if i.split == "train"]
    val = [i for i in items if i.split == "val"]
    scores = {}
    for method in methods:
        x_train = frozen_features(prepare_images(train, image_size, method, cache_dir), image_size)
        x_val = frozen_features(prepare_images(val, image_size, method, cache_dir), image_size)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
        probe.fit(x_train, labels_of(train))
        scores[method] = float(roc_auc_score(labels_of(val), probe.predict_proba(x_val)[:, 1]))
        log.info("enhancement probe", extra={"method": method, "val_auc": scores[method]})
    return scores


def evaluate_probs(
    y: NDArray[np.int64], p_covid: NDArray[np.float64], groups: list[str] | None = None
) -> dict[str, Any]:
    """Point metrics plus 95 % bootstrap intervals (resampling patients when groups given)."""
    metrics: dict[str, Any] = dict(binary_metrics(y, p_covid))
    intervals = bootstrap_cis(
        y, p_covid, binary_metrics, groups=None if groups is None else np.asarray(groups)
    )
    for name in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
        metrics[f"{name}_ci95"] = list(intervals[name])
    return metrics


def train_slice_model(
    data_dir: Path,
    out_dir: Path,
    version: str,
    config: TrainConfig,
    seeds: tuple[int, ...] = (0,),
    extra_sources: tuple[str, ...] = (),
    cache_dir: Path | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Train one member per seed on UCSD train (+extras), select each on UCSD val, save."""
    items = ucsd_items(data_dir)
    train = [i for i in items if i.split == "train"]
    val = [i for i in items if i.split == "val"]
    extras = [item for source in extra_sources for item in extra_items(data_dir, source)]
    size, enhancement = config.image_size, config.enhancement
    x_train = prepare_images(train + extras, size, enhancement, cache_dir)
    y_train = labels_of(train + extras)
    domain = np.array([0] * len(train) + [1] * len(extras), dtype=np.int64)
    x_val, y_val = prepare_images(val, size, enhancement, cache_dir), labels_of(val)

    members, runs = [], []
    for seed in seeds:
        result = fit_slice_cnn(
            x_train, y_train, replace(config, seed=seed), domain=domain, val=(x_val, y_val)
        )
        assert result.val_probs is not None
        members.append(result.model)
        runs.append(
            {
                "seed": seed,
                "best_epoch": result.best_epoch,
                "seconds": round(result.seconds, 1),
                "history": result.history,
                "val": binary_metrics(y_val, result.val_probs[:, 1]),
            }
        )
    save_slice_model(out_dir, version, members, enhancement, tta=config.tta)
    # Score val through the saved files: the metrics describe exactly what ships.
    bundle = load_slice_model(out_dir)
    val_probs = bundle.predict_proba(x_val)[:, 1]
    report = {
        "version": version,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "machine": platform.machine(),
            "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "threads": torch.get_num_threads(),
        },
        "train_config": {k: v for k, v in vars(config).items() if k not in ("augment", "seed")}
        | {"seeds": list(seeds)}
        | {"augment": vars(config.augment)},
        "data": {
            "train": {
                "ucsd-covid-ct/train": len(train),
                **{s: sum(i.source == s for i in extras) for s in extra_sources},
            },
            "val": {"ucsd-covid-ct/val": len(val), "patients": len({i.patient_id for i in val})},
        },
        "runs": runs,
        "val": evaluate_probs(y_val, val_probs),
        "val_patient_bootstrap": evaluate_probs(y_val, val_probs, [i.patient_id for i in val]),
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report
