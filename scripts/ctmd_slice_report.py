"""Slice scores of the shipped CNN on the COVID-CT-MD series against their infected-slice labels.

Usage: .venv/bin/python -m scripts.ctmd_slice_report   (prints one JSON object)
"""

from __future__ import annotations

import csv
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from services.common.config import get_settings
from services.ensemble.stage import loaded_ensemble
from services.inference.stage import loaded_slice_model
from services.training.ensemble_cv import ctmd_sequences


def main() -> None:
    root = get_settings().data_dir / "covid-ct-md"
    slice_model, ensemble = loaded_slice_model(), loaded_ensemble().model
    with (root / "infected_slices.csv").open(newline="") as handle:
        infected = {
            row["study"]: {
                int(i) for i in row["infected_slice_indices_sorted_by_slice_location"].split()
            }
            for row in csv.DictReader(handle)
        }
    report: dict[str, object] = {}
    scores, lesion, covid_series = [], [], []
    for series in ctmd_sequences(root.parent, slice_model):
        p = series.p_covid
        is_infected = np.array([i in infected.get(series.study, set()) for i in series.kept])
        is_covid = series.diagnosis == "COVID"
        report[series.study] = {
            "diagnosis": series.diagnosis,
            "slices_used": len(p),
            "mean": float(p.mean()),
            "max": float(p.max()),
            "share_above_0_5": float((p > 0.5).mean()),
            "infected_mean": float(p[is_infected].mean()) if is_infected.any() else None,
            "other_mean": float(p[~is_infected].mean()),
            "patient_p_covid": float(ensemble.predict_proba([p])[0, 1]),
        }
        scores.append(p)
        lesion.append(is_infected & is_covid)
        covid_series.append(np.full(len(p), is_covid))
    s, y_lesion, y_series = (np.concatenate(a) for a in (scores, lesion, covid_series))
    report["slice_auc_covid_lesion_vs_rest"] = float(roc_auc_score(y_lesion, s))
    report["slice_auc_covid_series_vs_rest"] = float(roc_auc_score(y_series, s))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
