"""The preprocessing stage: an uploaded study in, CNN-ready slices out.

The Celery task and the offline ``diagnose`` both call :func:`preprocess_path`; the
options always come from the slice model's artefact (``config.json``), so both paths feed
the CNN what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import Settings
from services.common.modelinfo import SliceModelInfo
from services.preprocess.pipeline import PreprocessOptions, preprocess_study
from services.preprocess.readers import read_study
from services.preprocess.types import PreparedStudy, Study


@dataclass(frozen=True)
class PreprocessedStudy:
    prepared: PreparedStudy
    series: dict[str, Any] | None  # which series was chosen when the upload held several
    study: Study  # as read: native slices (HU for volumes) and per-slice source information


def preprocess_options(model: SliceModelInfo) -> PreprocessOptions:
    return PreprocessOptions(
        size=model.image_size,
        enhancement=model.enhancement,
        image_segmentation=model.image_segmentation,  # type: ignore[arg-type]  # checked on use
    )


def preprocess_path(path: Path, settings: Settings, model: SliceModelInfo) -> PreprocessedStudy:
    """Read, order, segment, de-duplicate and crop; raises ``StudyError`` on bad input."""
    study = read_study(path, settings)
    return PreprocessedStudy(
        preprocess_study(study, preprocess_options(model)), study.series, study
    )
