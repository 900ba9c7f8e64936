"""Wall time of `diagnose` on the shared 133-slice series against the sum of its stages."""

from __future__ import annotations

from bench.common import best_of, report, sample_series
from services.diagnosis import diagnose_path, load_models, preprocess_options
from services.preprocess.pipeline import preprocess_study
from services.preprocess.readers import read_study


def main() -> dict[str, float]:
    series = sample_series()
    models = load_models()
    diagnose_path(series)  # warm caches (model load, imports)

    study = read_study(series)
    prepared = preprocess_study(study, preprocess_options(models))
    probs = models.slice_model.predict_proba(prepared.inputs)
    stages = {
        "read": best_of(lambda: read_study(series), 2),
        "preprocess": best_of(lambda: preprocess_study(study, preprocess_options(models)), 2),
        "score": best_of(lambda: models.slice_model.predict_proba(prepared.inputs), 2),
        "ensemble": best_of(lambda: models.ensemble.predict_proba([probs]), 2),
    }
    wall = best_of(lambda: diagnose_path(series), 2)
    result = {f"stage_{k}_s": v for k, v in stages.items()}
    result |= {
        "stages_sum_s": sum(stages.values()),
        "diagnose_wall_s": wall,
        "ratio_diagnose_vs_stages_sum": wall / sum(stages.values()),
    }
    return report(result)


if __name__ == "__main__":
    main()
