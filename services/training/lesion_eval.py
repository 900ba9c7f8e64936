"""Evaluate the lesion segmenter (issue 16 §4, §5): phantoms, real series, 2-D radiologist masks.

Each sub-command compares the structure-aware segmenter (:func:`segment_lesions`) with the
global HU ranges of today (``baseline``: every lung voxel of the same lung mask whose HU lies
in −700…+100, the ``lung_features`` ranges, with no structure removal).

* ``phantoms``: lesions of known volume inserted into normal001
  (:mod:`services.training.lesion_phantoms`), written as DICOM under ``--work-dir``, read back
  through ``read_study`` (the real path), at 1 / 2.5 / 5 mm and a sharp / soft kernel, and
  sparse (every third 2 mm slice, 6 mm apart: :data:`ACQUISITIONS`; ``--acquisition`` picks
  some). Per
  phantom: Dice, class agreement (GGO vs consolidation on the true-positive voxels), per lesion
  measured vs inserted volume (measured = segmented voxels within 4 voxels of that lesion),
  false-positive volume away from the lesions (% of lung); plus the untouched normal001.
* ``real``: COVID-CT-MD: per-slice lesion share (lesion / lung voxels); AUC of P002's
  infected slices vs every slice of normal001 (lesion detection: ``infected_vs_normal``) and
  vs every slice of cap002 and normal001 (COVID specificity, as the slice CNN is scored; cap002's
  pneumonia counts against), overall and per band, bootstrap CIs
  (:func:`services.training.realct_eval.ctmd_report`); per-series opacity %.
* ``masks2d``: lesion-masks-2d (8-bit): grey → pseudo-HU (air −1000, tissue +40, as
  ``slice_lesion``), pixel size from the body width, the segmenter on a thin volume
  (:func:`slice_volume`: the slice framed by tissue and repeated along z); Dice per image
  against the radiologist's lesion mask, mean / median with bootstrap CI.

Run::

    python -m services.training.lesion_eval phantoms --data-dir ../shared/data \\
        --out cache/lesion_phantoms.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from services.common.config import get_settings
from services.preprocess.lesions import LesionConfig, LesionMasks, default_config, segment_lesions
from services.preprocess.lung_features import patient_left_on_image_right
from services.preprocess.readers import read_study
from services.preprocess.types import Study
from services.training.lesion_phantoms import (
    acquire,
    insert_lesions,
    reference_lungs,
    write_dicom_series,
)
from services.training.metrics import print_and_save
from services.training.realct_eval import _infected, ctmd_report

BASELINE_HU = (-700, 100)
THICKNESSES = (1.0, 2.5, 5.0)
KERNELS = ("sharp", "soft")
# (slice mm, keep one slice in every, kernel): contiguous slices at each thickness and kernel,
# and a sparse protocol (every third 2 mm slice, 6 mm apart; what the demo study is).
ACQUISITIONS = tuple((t, 1, k) for t in THICKNESSES for k in KERNELS) + tuple(
    (2.0, 3, k) for k in KERNELS
)


def acquisition_name(slice_mm: float, every: int, kernel: str) -> str:
    gap = f"_every{every}" if every > 1 else ""
    return f"{slice_mm:g}mm{gap}_{kernel}"


def segment_study(study: Study, config: LesionConfig) -> tuple[LesionMasks, float]:
    """The segmenter on a study read by ``read_study``, and the seconds it took."""
    assert study.hu is not None and study.spacing_mm is not None
    t0 = time.perf_counter()
    masks = segment_lesions(
        study.hu, study.spacing_mm,
        patient_left_on_image_right=patient_left_on_image_right(study), config=config,
    )  # fmt: skip
    return masks, time.perf_counter() - t0


def baseline_masks(hu: NDArray[np.int16], masks: LesionMasks) -> NDArray[np.bool_]:
    """Today's global ranges: lung voxels with HU in -700..+100, nothing removed."""
    return np.asarray((masks.lungs > 0) & (hu >= BASELINE_HU[0]) & (hu <= BASELINE_HU[1]))


def _dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else round(2.0 * float((a & b).sum()) / total, 4)


def score_phantom(
    lesion: NDArray[np.bool_],
    ggo: NDArray[np.bool_] | None,
    labels: NDArray[np.uint8],
    classes: NDArray[np.uint8],
    kinds: list[str],
    lungs: NDArray[np.uint8],
    spacing: tuple[float, float, float],
) -> dict[str, Any]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    truth = labels > 0
    near_any = ndimage.binary_dilation(truth, iterations=4)
    lung_n = max(1, int((lungs > 0).sum()))
    per_lesion = {}
    for i, kind in enumerate(kinds, start=1):
        own = labels == i
        region = ndimage.binary_dilation(own, iterations=4)
        true_ml = float(own.sum()) * voxel_ml
        measured = float((lesion & region).sum()) * voxel_ml
        per_lesion[kind] = {
            "inserted_ml": round(true_ml, 2),
            "measured_ml": round(measured, 2),
            "error_percent": round(100.0 * (measured - true_ml) / true_ml, 1) if true_ml else None,
            "dice": _dice(lesion & region, own),
        }
    tp = lesion & truth
    out: dict[str, Any] = {
        "dice": _dice(lesion, truth),
        "inserted_ml": round(float(truth.sum()) * voxel_ml, 2),
        "measured_ml": round(float(lesion.sum()) * voxel_ml, 2),
        "false_positive_ml": round(float((lesion & ~near_any).sum()) * voxel_ml, 2),
        "false_positive_percent_of_lung": round(
            100.0 * float((lesion & ~near_any).sum()) / lung_n, 3
        ),
        "lesions": per_lesion,
    }
    if ggo is not None and tp.any():
        agree = (ggo & tp & (classes == 1)).sum() + (~ggo & tp & (classes == 2)).sum()
        out["class_agreement"] = round(float(agree) / float(tp.sum()), 4)
    return out


def run_phantoms(
    data_dir: Path,
    work_dir: Path,
    config: LesionConfig,
    seed: int = 0,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Phantoms of one seed at every acquisition of :data:`ACQUISITIONS` (or those named in
    ``only``, e.g. ``{"2mm_every3_sharp"}``)."""
    acquisitions = [a for a in ACQUISITIONS if only is None or acquisition_name(*a) in only]
    if only is not None and len(acquisitions) != len(only):
        known = ", ".join(acquisition_name(*a) for a in ACQUISITIONS)
        raise ValueError(f"unknown acquisition in {sorted(only)}; known: {known}")
    settings = get_settings()
    source = read_study(data_dir / "covid-ct-md" / "normal001", settings)
    assert source.hu is not None and source.spacing_mm is not None
    spacing = source.spacing_mm
    clean, clean_seconds = segment_study(source, config)
    lung_n = max(1, int((clean.lungs > 0).sum()))
    report: dict[str, Any] = {
        "source": "COVID-CT-MD normal001 (CC BY 4.0), 2 mm slices",
        "seed": seed,
        "placement": "lesion_phantoms.reference_lungs (independent of the segmenter)",
        "normal001_untouched": {
            "lung_ml": round(lung_n * float(np.prod(spacing)) / 1000.0, 1),
            "segmenter_opacity_percent": round(100.0 * float(clean.lesion.sum()) / lung_n, 3),
            "segmenter_consolidation_percent": round(
                100.0 * float(clean.consolidation.sum()) / lung_n, 3
            ),
            "baseline_opacity_percent": round(
                100.0 * float(baseline_masks(source.hu, clean).sum()) / lung_n, 3
            ),
            "seconds": round(clean_seconds, 2),
        },
        "phantoms": {},
    }
    # Placed in the harness's own lung mask: the truth must not move with the segmenter's.
    phantom = insert_lesions(source.hu, reference_lungs(source.hu, spacing), spacing, seed=seed)
    for thickness, every, kernel in acquisitions:
        name = acquisition_name(thickness, every, kernel)
        seen = acquire(phantom, thickness, kernel, seed=seed, every=every)
        folder = work_dir / name
        if folder.exists():
            shutil.rmtree(folder)
        write_dicom_series(seen, folder, description=f"lesion phantom {name}")
        study = read_study(folder, settings)
        assert study.hu is not None and study.spacing_mm is not None
        if study.hu.shape != seen.hu.shape:
            raise RuntimeError(f"{name}: read back {study.hu.shape}, wrote {seen.hu.shape}")
        masks, seconds = segment_study(study, config)
        entry = score_phantom(
            masks.lesion, masks.ggo, seen.labels, seen.classes, seen.kinds, masks.lungs,
            study.spacing_mm,
        )  # fmt: skip
        entry["seconds"] = round(seconds, 2)
        entry["baseline"] = score_phantom(
            baseline_masks(study.hu, masks), None, seen.labels, seen.classes, seen.kinds,
            masks.lungs, study.spacing_mm,
        )  # fmt: skip
        report["phantoms"][name] = entry
        print(
            f"{name}: dice {entry['dice']} fp {entry['false_positive_percent_of_lung']} % "
            f"class {entry.get('class_agreement')} | baseline dice {entry['baseline']['dice']} "
            f"fp {entry['baseline']['false_positive_percent_of_lung']} %",
            flush=True,
        )
    errors = [
        abs(v["error_percent"])
        for p in report["phantoms"].values()
        for v in p["lesions"].values()
        if v["inserted_ml"] >= 1.0 and v["error_percent"] is not None
    ]
    dices = [p["dice"] for p in report["phantoms"].values() if p["dice"] is not None]
    report["summary"] = {
        "lesions_at_least_1ml": len(errors),
        "volume_error_abs_percent_median": round(float(np.median(errors)), 1) if errors else None,
        "volume_error_abs_percent_max": round(float(np.max(errors)), 1) if errors else None,
        "share_within_15_percent": round(float(np.mean(np.array(errors) <= 15.0)), 3)
        if errors
        else None,
        "dice_min": min(dices) if dices else None,
        "dice_mean": round(float(np.mean(dices)), 4) if dices else None,
        "targets": "volume error <= 15 % (lesions >= 1 mL), Dice >= 0.80, FP <= 0.3 % on normal001",
    }
    return report


def _rank(study: Any) -> NDArray[np.int64]:
    locs = np.array([info.get("slice_location") for info in study.slice_info], np.float64)
    rank = np.empty(len(locs), np.int64)
    rank[np.argsort(locs, kind="stable")] = np.arange(len(locs))
    return rank


def run_real(data_dir: Path, config: LesionConfig) -> dict[str, Any]:
    settings = get_settings()
    root = data_dir / "covid-ct-md"
    infected = _infected(root)
    with (root / "studies.csv").open(newline="") as handle:
        studies = [(r["study"], r["diagnosis"]) for r in csv.DictReader(handle)]
    scores: dict[str, dict[str, list[Any]]] = {"segmenter": {}, "baseline": {}}
    series: dict[str, Any] = {}
    for name, diagnosis in studies:
        study = read_study(root / name, settings)
        assert study.hu is not None and study.spacing_mm is not None
        masks, seconds = segment_study(study, config)
        lung = masks.lungs > 0
        lung_n = max(1, int(lung.sum()))
        base = baseline_masks(study.hu, masks)
        series[name] = {
            "diagnosis": diagnosis,
            "seconds": round(seconds, 2),
            "lung_ml": round(lung_n * float(np.prod(study.spacing_mm)) / 1000.0, 1),
            "opacity_percent": round(100.0 * float(masks.lesion.sum()) / lung_n, 3),
            "ggo_percent": round(100.0 * float(masks.ggo.sum()) / lung_n, 3),
            "consolidation_percent": round(100.0 * float(masks.consolidation.sum()) / lung_n, 3),
            "baseline_opacity_percent": round(100.0 * float(base.sum()) / lung_n, 3),
        }
        rank = _rank(study)
        order = np.argsort(rank)
        flags = [int(r) in infected.get(name, set()) for r in rank[order]]
        per_slice_lung = lung.sum(axis=(1, 2)).astype(np.float64)
        for key, lesion in (("segmenter", masks.lesion), ("baseline", base)):
            share = lesion.sum(axis=(1, 2)) / np.maximum(per_slice_lung, 1.0)
            share[per_slice_lung < 50] = 0.0
            scores[key][name] = [diagnosis, share[order].tolist(), rank[order].tolist(), flags]
        print(name, series[name], flush=True)
    return {
        "per_series": series,
        # Lesion detection: P002's infected slices against a patient without lung disease.
        "infected_vs_normal_slice_auc": {
            k: ctmd_report({n: v[n] for n in v if v[n][0] != "CAP"}, 0.01)
            for k, v in scores.items()
        },
        # COVID specificity as the slice CNN is scored: cap002's slices (its pneumonia
        # included, labelled or not) are negatives too.
        "infected_slice_auc": {k: ctmd_report(v, 0.01) for k, v in scores.items()},
        "within_p002_auc": {k: _within_covid_auc(v) for k, v in scores.items()},
        "fitting": "nothing fitted on these series (constants set on phantoms)",
    }


def _within_covid_auc(scores: dict[str, list[Any]]) -> float | None:
    """AUC of the COVID series' labelled infected slices against its own unlabelled ones.

    Not a target: the labels are incomplete (P002's unlabelled slice 55, between the labelled
    runs 24-47 and 66-109, shows ground glass in the left lower lobe), so this ranks lesions
    against lesions; reported for completeness.
    """
    for diagnosis, share, _rank, infected in scores.values():
        flags = np.asarray(infected, bool)
        if diagnosis == "COVID" and flags.any() and (~flags).any():
            return round(float(roc_auc_score(flags.astype(int), np.asarray(share))), 4)
    return None


TISSUE_HU = 40  # soft tissue: the ring that closes a cropped slice and its dark padding


def slice_volume(
    hu: NDArray[np.int16],
    pixel_mm: float,
    outside: NDArray[np.bool_] | None = None,
    *,
    slices: int = 5,
    slice_mm: float = 2.0,
    ring_px: int = 8,
) -> tuple[NDArray[np.int16], tuple[float, float, float], tuple[slice, slice]]:
    """One 2-D slice as a thin 3-D volume the segmenter can read.

    The segmenter takes air connected to the image border for outside air; screenshots are
    cropped so that the lungs often touch the border and were thrown away with it. Here the
    slice (with ``outside`` pixels, e.g. the constant padding, set to tissue) is framed by a
    ``ring_px`` ring of soft tissue and repeated ``slices`` times at ``slice_mm`` (a 10 mm slab:
    the lung volume floor in mL then reads as cm2 of lung). Returns the volume, its spacing and
    the (rows, cols) slices that cut the original image back out of one volume slice.
    """
    if hu.ndim != 2:
        raise ValueError(f"one slice (Y, X) expected, got {hu.shape}")
    img = hu.astype(np.int16, copy=True)
    if outside is not None:
        img[outside] = TISSUE_HU
    framed = np.pad(img, ring_px, mode="constant", constant_values=TISSUE_HU)
    volume = np.ascontiguousarray(np.broadcast_to(framed, (slices, *framed.shape)))
    crop = (slice(ring_px, ring_px + hu.shape[0]), slice(ring_px, ring_px + hu.shape[1]))
    return volume, (float(slice_mm), float(pixel_mm), float(pixel_mm)), crop


def masks2d_config(config: LesionConfig) -> LesionConfig:
    """The segmenter's config for a thin volume of one repeated slice (:func:`slice_volume`).

    The 3-D tube test is meaningless there (no z curvature: every in-plane blob looks like a
    tube along z), so it is switched off; vessels are removed by the in-plane line filter (on
    for any slice thickness here) and the opening. 10 mm slab: a 20 cm2 lung holds 20 mL.
    """
    return LesionConfig.from_mapping(
        {
            **config.to_mapping(),
            "min_lung_ml": 20.0,
            "tube_strength_hu": 1e9,
            "line_min_slice_mm": 0.0,
        }
    )


def run_masks2d(data_dir: Path, config: LesionConfig) -> dict[str, Any]:
    from services.preprocess.image_segmentation import body_mask, lung_mask_2d, padding_mask
    from services.preprocess.slice_lesion import estimate_anchors, pixel_mm, pseudo_hu

    root = data_dir / "lesion-masks-2d"
    with (root / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    cfg2d = masks2d_config(config)
    dices, skipped = [], 0
    for row in rows:
        grey = cv2.imread(str(root / row["file"]), cv2.IMREAD_GRAYSCALE)
        truth = cv2.imread(str(root / row["mask"]), cv2.IMREAD_GRAYSCALE)
        if grey is None or truth is None:
            skipped += 1
            continue
        image = np.asarray(grey, np.uint8)
        lung = lung_mask_2d(image)
        anchors = estimate_anchors(image, lung)
        if anchors is None or not anchors.ok():
            skipped += 1
            continue
        hu = np.clip(pseudo_hu(image, anchors), -1024, 3000).astype(np.int16)
        pad = padding_mask(image)
        body, _ = body_mask(image, pad)
        px = pixel_mm(body)
        volume, spacing, crop = slice_volume(hu, px, pad)
        masks = segment_lesions(volume, spacing, config=cfg2d)
        d = _dice(masks.lesion[volume.shape[0] // 2][crop], truth > 0)
        if d is None:
            skipped += 1
            continue
        dices.append(d)
    arr = np.array(dices)
    ci = None
    if len(arr):  # percentile bootstrap of the mean over images (metrics' helpers need labels)
        rng = np.random.default_rng(0)
        means = arr[rng.integers(0, len(arr), (1000, len(arr)))].mean(axis=1)
        ci = [
            round(float(np.percentile(means, 2.5)), 4),
            round(float(np.percentile(means, 97.5)), 4),
        ]
    return {
        "images": len(rows),
        "scored": len(dices),
        "skipped": skipped,
        "dice_mean": round(float(arr.mean()), 4) if len(arr) else None,
        "dice_mean_ci95": ci,
        "dice_median": round(float(np.median(arr)), 4) if len(arr) else None,
        "note": "8-bit screenshots in pseudo-HU, pixel size guessed from the body width; no target",
    }


def with_overrides(config: LesionConfig, assignments: list[str]) -> LesionConfig:
    """``config`` with ``KEY=JSON`` assignments applied (unknown keys are an error)."""
    values = config.to_mapping()
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {assignment!r}")
        values[key] = json.loads(raw)
    return LesionConfig.from_mapping(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("phantoms", "real", "masks2d"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work-dir", type=Path, default=Path("cache/lesion_phantoms"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--acquisition",
        action="append",
        default=None,
        help="phantoms: only this acquisition (repeatable), e.g. 2mm_every3_sharp",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a lesion config value for an ablation, e.g. --set cap_support=1.01",
    )
    args = parser.parse_args(argv)
    config = with_overrides(default_config(), args.set)
    started = time.perf_counter()
    if args.what == "phantoms":
        only = set(args.acquisition) if args.acquisition else None
        report = run_phantoms(args.data_dir, args.work_dir, config, args.seed, only)
    elif args.what == "real":
        report = run_real(args.data_dir, config)
    else:
        report = run_masks2d(args.data_dir, config)
    report["config"] = config.to_mapping()
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_and_save(report, args.out)


if __name__ == "__main__":
    main()
