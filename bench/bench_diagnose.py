"""Wall time of `diagnose` on the shared 133-slice series against the sum of its stages.

Also the scoring stage against one bare forward pass of one member over the same slices
(no TTA, no batching overhead beyond the shipped batch size): what members x TTA and the
scorer cost on top of the network itself. And, as a baseline in the same run, slice-CNN v1
(three members x TTA), the model v1.1 replaced for speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import best_of, report, sample_series
from services.common.config import get_settings
from services.common.modelinfo import slice_model_info
from services.diagnosis import diagnose_path
from services.ensemble.stage import loaded_ensemble, verdict
from services.inference.artifacts import load_slice_model
from services.inference.model import SliceCNN
from services.inference.predict import predict_proba
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
            lambda: verdict(
                scores.probabilities,
                prepared.lung_features,
                ensemble,
                "bench",
                prepared.lesion_findings,
            ),
            2,
        ),
    }
    wall = best_of(lambda: diagnose_path(series), 2)
    member = loaded_slice_model_members(settings)
    bare = best_of(lambda: predict_proba(member, prepared.inputs, tta=False), 2)
    v1 = load_slice_model(v1_dir(settings))
    v1_inputs = preprocess_path(series, settings, slice_model_info(v1_dir(settings))).prepared
    v1_score = best_of(lambda: v1.predict_proba(v1_inputs.inputs), 1)
    result = {f"stage_{k}_s": v for k, v in stages.items()}
    result |= {
        "stages_sum_s": sum(stages.values()),
        "diagnose_wall_s": wall,
        "ratio_diagnose_vs_stages_sum": wall / sum(stages.values()),
        "single_bare_forward_s": bare,
        "ratio_score_vs_single_bare_forward": stages["score"] / bare,
        "baseline_v1_score_s": v1_score,
        "ratio_score_vs_v1_score": stages["score"] / v1_score,
    }
    return report(result)


def v1_dir(settings: Any) -> Path:
    return Path(settings.models_dir) / "slice-cnn" / "v1"


def loaded_slice_model_members(settings: Any) -> SliceCNN:
    """The first member of the served slice model (what one bare forward pass runs)."""
    return load_slice_model(settings.slice_model_dir).members[0]


if __name__ == "__main__":
    main()
