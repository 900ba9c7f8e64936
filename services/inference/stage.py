"""The scoring stage: prepared slices in, per-slice probabilities out, plus Grad-CAM
overlays of the most suspicious slices. The Celery task and the offline ``diagnose`` both
run these functions; only how inputs arrive and outputs are kept differs."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from services.common.caches import process_cache
from services.common.config import get_settings
from services.common.modelinfo import COVID_INDEX
from services.inference.artifacts import SliceModel, load_slice_model
from services.inference.gradcam import heatmap_pngs
from services.inference.scorer import ScoreBatch, Scorer, make_scorer

log = logging.getLogger(__name__)


class ModelVersionMismatch(Exception):
    """The explainer's weights are not the ones that produced the scores."""


@process_cache
def loaded_scorer() -> Scorer:
    """The process's scorer (TorchServe or in-process), built once from its settings."""
    return make_scorer(get_settings())


@process_cache
def loaded_slice_model() -> SliceModel:
    """The slice CNN loaded here: Grad-CAM and evaluation (TorchServe returns scores only)."""
    return load_slice_model(get_settings().slice_model_dir)


def score_slices(inputs: NDArray[np.uint8], scorer: Scorer) -> ScoreBatch:
    """(N, S, S) uint8 prepared slices -> (N, 2) probabilities and the model that made them."""
    return scorer.score(inputs)


def explain_slices(
    inputs: NDArray[np.uint8],
    scores: ScoreBatch,
    explainer: SliceModel,
    top_k: int,
    cams: dict[int, bytes] | None = None,
) -> dict[int, bytes]:
    """Grad-CAM PNGs of the ``top_k`` highest-P(COVID) slices, keyed by stack position.

    Refuses to explain scores it did not make: heatmaps of other weights would show the
    reader evidence the verdict never used.
    """
    if explainer.version != scores.model_version:
        raise ModelVersionMismatch(
            f"scores come from {scores.model_name} {scores.model_version}, "
            f"the explainer is {explainer.version}"
        )
    return heatmap_pngs(explainer, inputs, scores.probabilities[:, COVID_INDEX], top_k, cams)
