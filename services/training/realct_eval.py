"""Per-source evaluation of a shipped slice model on real CT, with bootstrap 95 % intervals.

Sets (all scored through the SAVED artefact, ``load_slice_model(dir).predict_proba`` on
``prepare_slice`` uint8 slices):

* ``img512``                      held out from training AND selection: the transfer test
* ``sarscov2-ct/sel``             held-out random split of a same-site set without patient
                                  ids: optimistic (same hospital, patients may straddle)
* ``mosmed-vs-masked-normal/sel`` held-out mosmed images vs held-out masked-normal patients
* ``ucsd-covid-ct/val``           official val split (used for epoch selection: not a test)
* COVID-CT-MD                     never trained on or selected on. Infected-slice AUC = P002
  slices listed in ``infected_slices.csv`` vs ALL slices of cap002 and normal001, overall
  and within thirds (bands) of each series' kept lung-bearing slices sorted by
  SliceLocation; plus per-series P(COVID) summaries. Two paths:
  ``series`` = ``preprocess_study`` (what serving does with a DICOM upload: 3-D lung
  segmentation, no-lung and near-duplicate slices dropped) and ``per_slice`` = every slice
  with lung (per-slice segmentation, ``prepare_slice``), no de-duplication.

CT-MD intervals resample slices of three series: neighbouring slices are correlated and
there are only three patients, so those intervals are far too narrow for any claim about
patients; they only describe these slices.

Usage::

    python -m services.training.realct_eval --model models/slice-cnn/v2 [--write]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from services.common.config import get_settings
from services.inference.artifacts import SliceModel, load_slice_model
from services.preprocess.pipeline import PreprocessOptions, prepare_slice, preprocess_study
from services.preprocess.readers import read_study
from services.preprocess.segmentation import segment_lungs
from services.training.metrics import binary_metrics, bootstrap_cis
from services.training.realct_data import RealCTSet, build_realct_set

BANDS = ("inferior", "mid", "superior")  # by SliceLocation: inferior ~ base, superior ~ apex


def metrics_with_ci(
    y: NDArray[np.int64],
    p: NDArray[np.float64],
    threshold: float,
    groups: list[str] | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    def fn(yy: NDArray[np.int64], pp: NDArray[np.float64]) -> dict[str, Any]:
        return binary_metrics(yy, pp, threshold=threshold)

    out: dict[str, Any] = {
        k: (round(v, 4) if isinstance(v, float) else v) for k, v in fn(y, p).items()
    }
    out["n_pos"], out["n_neg"] = int(y.sum()), int((1 - y).sum())
    cis = bootstrap_cis(
        y, p, fn, n_boot=n_boot, groups=None if groups is None else np.array(groups)
    )
    for name in ("auc", "sensitivity", "specificity", "accuracy"):
        lo, hi = cis[name]
        out[f"{name}_ci95"] = [
            None if lo is None else round(lo, 4),
            None if hi is None else round(hi, 4),
        ]
    out["threshold"] = threshold
    out["bootstrap_unit"] = "slice" if groups is None else "patient"
    return out


def two_d_sets(data: RealCTSet) -> dict[str, tuple[NDArray[np.intp], bool]]:
    """name -> (indices, resample by patient)."""
    return {
        "img512 (held out: transfer test)": (data.index("test", "img512"), False),
        "sarscov2-ct/sel (same-site, optimistic)": (data.index("sel", "sarscov2-ct"), False),
        "mosmed-vs-masked-normal/sel (held-out patients)": (
            np.concatenate([data.index("sel", "mosmed"), data.index("sel", "masked-normal")]),
            True,
        ),
        "ucsd-covid-ct/val (used for selection)": (data.index("sel", "ucsd-covid-ct"), True),
    }


def eval_2d(model: SliceModel, data: RealCTSet) -> dict[str, Any]:
    out = {}
    for name, (idx, by_patient) in two_d_sets(data).items():
        if len(idx) == 0:
            continue
        x = data.data.prepared(model.enhancement, idx)
        p = model.predict_proba(x)[:, 1]
        y = data.labels(idx)
        groups = [data.data.items[i].patient_id for i in idx] if by_patient else None
        out[name] = metrics_with_ci(y, p, model.threshold, groups)
    return out


def _infected(root: Path) -> dict[str, set[int]]:
    with (root / "infected_slices.csv").open(newline="") as handle:
        return {
            row["study"]: {
                int(i) for i in row["infected_slice_indices_sorted_by_slice_location"].split()
            }
            for row in csv.DictReader(handle)
        }


def ctmd_scores(model: SliceModel, data_dir: Path) -> dict[str, dict[str, list[Any]]]:
    """Per series and path: p(COVID), rank by SliceLocation, infected flag of every kept slice."""
    root = data_dir / "covid-ct-md"
    infected = _infected(root)
    out: dict[str, dict[str, list[Any]]] = {}
    with (root / "studies.csv").open(newline="") as handle:
        studies = list(csv.DictReader(handle))
    for row in studies:
        name = row["study"]
        study = read_study(root / name, get_settings())
        locs = [info.get("slice_location") for info in study.slice_info]
        # index into the series sorted by SliceLocation (the infected_slices.csv indexing)
        rank = np.empty(len(locs), np.int64)
        rank[np.argsort(np.array(locs, dtype=np.float64), kind="stable")] = np.arange(len(locs))
        options = PreprocessOptions(size=model.image_size, enhancement=model.enhancement)
        prepared = preprocess_study(study, options)
        p_series = model.predict_proba(prepared.inputs)[:, 1]
        kept_per_slice, inputs = [], []
        for i, image in enumerate(study.images):
            mask = segment_lungs(image)
            if mask.mean() >= options.min_lung_fraction:
                kept_per_slice.append(i)
                inputs.append(
                    prepare_slice(
                        image,
                        model.image_size,
                        model.enhancement,
                        mask=mask,
                        min_lung_fraction=options.min_lung_fraction,
                    )
                )
        p_slice = model.predict_proba(np.stack(inputs))[:, 1]
        for path, kept, p in (
            ("series", prepared.kept, p_series),
            ("per_slice", kept_per_slice, p_slice),
        ):
            r = rank[kept]
            order = np.argsort(r)
            out.setdefault(path, {})[name] = [
                row["diagnosis"],
                p[order].tolist(),
                r[order].tolist(),
                [int(k) in infected.get(name, set()) for k in r[order]],
            ]
    return out


def bands_of(n: int) -> NDArray[np.int64]:
    """0/1/2 = inferior/mid/superior third of n slices sorted by SliceLocation."""
    return np.minimum(np.arange(n) * 3 // max(n, 1), 2)


def ctmd_report(scores: dict[str, list[Any]], threshold: float) -> dict[str, Any]:
    ps, ys, bs, per_series = [], [], [], {}
    for name, (diagnosis, p, _rank, infected) in scores.items():
        p_arr, inf = np.asarray(p), np.asarray(infected, bool)
        band = bands_of(len(p_arr))
        q = np.quantile(p_arr, [0.1, 0.25, 0.5, 0.75, 0.9])
        per_series[name] = {
            "diagnosis": diagnosis,
            "slices": len(p_arr),
            "mean": round(float(p_arr.mean()), 4),
            "q10_q25_median_q75_q90": [round(float(v), 4) for v in q],
            "max": round(float(p_arr.max()), 4),
            "share_at_or_above_threshold": round(float((p_arr >= threshold).mean()), 4),
            "band_means": {BANDS[b]: round(float(p_arr[band == b].mean()), 4) for b in range(3)},
            "infected_mean": round(float(p_arr[inf].mean()), 4) if inf.any() else None,
            "not_infected_mean": round(float(p_arr[~inf].mean()), 4) if (~inf).any() else None,
        }
        if diagnosis == "COVID":
            keep = inf  # infected COVID slices are the positives; clean P002 slices are left out
            ps.append(p_arr[keep])
            ys.append(np.ones(keep.sum(), np.int64))
            bs.append(band[keep])
        else:
            ps.append(p_arr)
            ys.append(np.zeros(len(p_arr), np.int64))
            bs.append(band)
    p_all, y_all, b_all = np.concatenate(ps), np.concatenate(ys), np.concatenate(bs)
    out: dict[str, Any] = {
        "infected_slice_auc": {
            "definition": "P002 infected slices vs all kept slices of cap002 and normal001",
            "overall": metrics_with_ci(y_all, p_all, threshold),
        },
        "per_series": per_series,
    }
    for b, band_name in enumerate(BANDS):
        sel = b_all == b
        out["infected_slice_auc"][band_name] = metrics_with_ci(y_all[sel], p_all[sel], threshold)
    return out


def evaluate_model(
    model_dir: Path, data_dir: Path, cache_dir: Path | None = Path("cache")
) -> dict[str, Any]:
    torch.set_num_threads(1)
    started = time.perf_counter()
    model = load_slice_model(model_dir)
    meta = (
        json.loads((model_dir / "metrics.json").read_text())
        if (model_dir / "metrics.json").exists()
        else {}
    )
    include_ucsd = meta.get("train_config", {}).get("include_ucsd", True)
    data = build_realct_set(data_dir, model.image_size, cache_dir, include_ucsd=True)
    del include_ucsd  # UCSD val is always reported (it is a selection set only if trained with)
    report: dict[str, Any] = {"model": str(model_dir), "threshold": model.threshold}
    report["two_d"] = eval_2d(model, data)
    scores = ctmd_scores(model, data_dir)
    report["covid_ct_md"] = {path: ctmd_report(s, model.threshold) for path, s in scores.items()}
    report["covid_ct_md_slice_scores"] = scores
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, m in report["two_d"].items():
        lines.append(
            f"{name}: AUC {m['auc']} {m['auc_ci95']} n={m['n']} "
            f"sens {m['sensitivity']} spec {m['specificity']}"
        )
    for path, r in report["covid_ct_md"].items():
        a = r["infected_slice_auc"]
        lines.append(
            f"CT-MD[{path}] infected-slice AUC overall "
            f"{a['overall']['auc']} {a['overall']['auc_ci95']}; "
            + "; ".join(f"{b} {a[b]['auc']} {a[b]['auc_ci95']}" for b in BANDS)
        )
        for s, v in r["per_series"].items():
            lines.append(
                f"  {s} ({v['diagnosis']}): mean {v['mean']} "
                f"q {v['q10_q25_median_q75_q90']} bands {v['band_means']} "
                f"infected {v['infected_mean']} clean {v['not_infected_mean']}"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a slice model per real-CT source")
    parser.add_argument("--model", type=Path, default=Path("models/slice-cnn/v2"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--write", action="store_true", help="merge into <model>/metrics.json")
    parser.add_argument("--out", type=Path, help="also write the full report here")
    args = parser.parse_args(argv)
    report = evaluate_model(args.model, args.data_dir, args.cache_dir)
    print("\n".join(summary_lines(report)))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.write:
        path = args.model / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        metrics["eval"] = report
        path.write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    main()
