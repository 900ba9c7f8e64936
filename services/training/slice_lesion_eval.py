"""Evaluate the physics-based slice lesion score (:mod:`services.preprocess.slice_lesion`).

Nothing is trained: the score of an image is its ``lesion_share`` (ground glass +
consolidation share of the lung area). Per evaluation set this prints ROC AUC with a
1,000-resample percentile bootstrap 95 % CI (patients resampled where the set has real
patient ids), on the images where the score was computed (``ok``) and on all images with a
failed image scored 0 (no lesion found), and the share of failed images per class.

    python -m services.training.slice_lesion_eval --data-dir /work/shared/data \\
        --out cache/slice_lesion_eval.json [--sets sarscov2,ucsd-val]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.preprocess.slice_lesion import slice_lesion_share
from services.training.metrics import bootstrap_ci, roc_auc

SETS = ("img512", "sarscov2", "mosmed-vs-masked-normal", "ucsd-val", "ucsd-train")


@dataclass(frozen=True)
class Item:
    path: Path
    label: int  # 1 = COVID
    group: str  # patient id (or the file when there is none)


def load_set(data_dir: Path, name: str) -> list[Item]:
    """Images of one evaluation set with labels and patient groups."""

    def rows(sub: str) -> list[dict[str, str]]:
        with (data_dir / sub / "labels.csv").open(newline="") as fh:
            return list(csv.DictReader(fh))

    def item(sub: str, r: dict[str, str]) -> Item:
        return Item(
            data_dir / sub / r["file"], int(r["label"] == "COVID"), r.get("patient_id") or r["file"]
        )

    if name == "img512":
        return [
            item("real-ct-slices", r) for r in rows("real-ct-slices") if r["source"] == "img512"
        ]
    if name == "mosmed-vs-masked-normal":
        keep = ("mosmed", "masked-normal")
        return [item("real-ct-slices", r) for r in rows("real-ct-slices") if r["source"] in keep]
    if name == "sarscov2":
        return [item("sarscov2-ct", r) for r in rows("sarscov2-ct")]
    if name in ("ucsd-val", "ucsd-train"):
        split = name.split("-")[1]
        return [item("ucsd-covid-ct", r) for r in rows("ucsd-covid-ct") if r["split"] == split]
    raise ValueError(f"unknown set {name!r}; known: {', '.join(SETS)}")


def score_items(items: Sequence[Item]) -> tuple[list[dict[str, Any]], float]:
    """slice_lesion_share of each image; also the mean seconds per image."""
    out: list[dict[str, Any]] = []
    start = time.perf_counter()
    for it in items:
        image = cv2.imread(str(it.path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            out.append({"ok": False, "reason": "unreadable", "lesion_share": 0.0})
            continue
        out.append(slice_lesion_share(image))
    return out, (time.perf_counter() - start) / max(1, len(items))


def _auc_ci(y: np.ndarray, s: np.ndarray, groups: np.ndarray | None, n_boot: int) -> dict[str, Any]:
    if y.size == 0 or y.min() == y.max():
        return {"auc": None, "ci": [None, None], "n": int(y.size)}
    low, high = bootstrap_ci(y, s, roc_auc, n_boot=n_boot, seed=0, groups=groups)
    return {"auc": roc_auc(y, s), "ci": [low, high], "n": int(y.size)}


def evaluate_set(items: Sequence[Item], n_boot: int = 1000) -> dict[str, Any]:
    """AUCs (ok-only and all-with-failures-as-0), failure shares and median shares."""
    results, sec = score_items(items)
    y = np.array([it.label for it in items], np.int64)
    ok = np.array([bool(r["ok"]) for r in results])
    score = np.array([float(r["lesion_share"]) if r["ok"] else 0.0 for r in results])
    # Resample patients where several images share one (UCSD, masked-normal), else images.
    has_groups = len({it.group for it in items}) < len(items)
    groups = np.array([it.group for it in items]) if has_groups else None
    out: dict[str, Any] = {
        "n": len(items),
        "n_covid": int(y.sum()),
        "seconds_per_image": sec,
        "failed_share": float(1.0 - ok.mean()),
        "failed_share_covid": float(1.0 - ok[y == 1].mean()) if (y == 1).any() else None,
        "failed_share_noncovid": float(1.0 - ok[y == 0].mean()) if (y == 0).any() else None,
        "auc_ok": _auc_ci(y[ok], score[ok], None if groups is None else groups[ok], n_boot),
        "auc_all": _auc_ci(y, score, groups, n_boot),
        "patient_bootstrap": groups is not None,
    }
    for key in ("ggo_share", "consolidation_share", "lesion_share"):
        vals = np.array([float(r[key]) for r in results])
        for lab, name in ((1, "covid"), (0, "noncovid")):
            sel = ok & (y == lab)
            out[f"median_{key}_{name}"] = float(np.median(vals[sel])) if sel.any() else None
    reasons: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    out["fail_reasons"] = reasons
    return out


def _fmt(a: dict[str, Any]) -> str:
    if a["auc"] is None:
        return "      n/a           "
    return f"{a['auc']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("cache/slice_lesion_eval.json"))
    parser.add_argument(
        "--sets",
        default="sarscov2,ucsd-val,mosmed-vs-masked-normal,img512",
        help=f"comma-separated, from {', '.join(SETS)}",
    )
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    print(f"{'set':<26}{'n':>6}{'fail':>7}  {'AUC ok-only [95% CI]':<24}{'AUC all [95% CI]':<24}")
    for name in args.sets.split(","):
        res = evaluate_set(load_set(args.data_dir, name), n_boot=args.n_boot)
        report[name] = res
        print(
            f"{name:<26}{res['n']:>6}{res['failed_share']:>7.1%}  "
            f"{_fmt(res['auc_ok']):<24}{_fmt(res['auc_all']):<24}"
            f" {1000 * res['seconds_per_image']:.0f} ms/img"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
