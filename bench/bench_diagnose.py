"""Wall time of `diagnose` on the shared 133-slice series against the sum of its stages."""

from __future__ import annotations

from bench.common import best_of, report, sample_series
from services.common.config import get_settings
from services.common.modelinfo import slice_model_info
from services.diagnosis import diagnose_path
from services.ensemble.stage import loaded_ensemble, verdict
from services.inference.stage import loaded_scorer, score_slices
from services.preprocess.stage import preprocess_path


def main() -> dict[str, float]:
    series = sample_series()
    settings = get_settings()
    info = slice_model_info(settings.slice_model_dir)
    scorer, ensemble = loaded_scorer(), loaded_ensemble()
    diagnose_path(series)  # warm caches (model load, imports)

    prepared = preprocess_path(series, settings, info).prepared
    scores = score_slices(prepared.inputs, scorer)
    stages = {
        "preprocess": best_of(lambda: preprocess_path(series, settings, info), 2),
        "score": best_of(lambda: score_slices(prepared.inputs, scorer), 2),
        "ensemble": best_of(
            lambda: verdict(scores.probabilities, prepared.lung_features, ensemble, "bench"), 2
        ),
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
