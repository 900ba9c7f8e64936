"""Lesion segmenter time on the shared 133-slice series against today's preprocess (issue 16 §7).

The lesion step must add at most 5 s to ``diagnose`` on 2 cores: printed as seconds and as a
ratio to ``preprocess_path`` (read + segment + CNN inputs + HU features) measured in the same
run, best of 2, so a busy machine slows both alike.
"""

from __future__ import annotations

from bench.common import best_of, report, sample_series
from services.common.config import get_settings
from services.common.modelinfo import slice_model_info
from services.preprocess.lesions import segment_lesions
from services.preprocess.lung_features import patient_left_on_image_right
from services.preprocess.readers import read_study
from services.preprocess.stage import preprocess_path


def main() -> dict[str, float]:
    series = sample_series()
    settings = get_settings()
    info = slice_model_info(settings.slice_model_dir)
    study = read_study(series, settings)
    assert study.hu is not None and study.spacing_mm is not None
    hu, spacing, left = study.hu, study.spacing_mm, patient_left_on_image_right(study)
    segment_lesions(hu, spacing, patient_left_on_image_right=left)  # warm (config, imports)
    preprocess = best_of(lambda: preprocess_path(series, settings, info), 2)
    lesions = best_of(lambda: segment_lesions(hu, spacing, patient_left_on_image_right=left), 2)
    return report(
        {
            "slices": float(hu.shape[0]),
            "preprocess_s": preprocess,
            "lesions_s": lesions,
            "lesions_over_preprocess": lesions / preprocess,
        }
    )


if __name__ == "__main__":
    main()
