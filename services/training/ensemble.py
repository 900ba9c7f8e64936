"""Patient-grouped cross-validation and final fitting of the soft-vote ensemble.

Folds are drawn over patients (``StratifiedGroupKFold``): all studies of one patient fall in the
same fold, so a model is never tested on a patient it was trained on. Resampling
(SMOTE/SMOTEENN) lives inside each member's imblearn pipeline and therefore sees training
folds only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.model_selection import StratifiedGroupKFold

from services.ensemble.model import SoftVoteEnsemble
from services.training.metrics import binary_metrics, bootstrap_cis


def _take(sequences: Sequence[ArrayLike], idx: NDArray[np.intp]) -> list[ArrayLike]:
    return [sequences[i] for i in idx]


def _check_cv_inputs(
    sequences: Sequence[ArrayLike], y: ArrayLike, groups: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[Any]]:
    labels, patients = np.asarray(y), np.asarray(groups)
    n = len(sequences)
    if labels.shape != (n,) or patients.shape != (n,):
        raise ValueError(
            f"need one label and one patient id per sequence ({n}), "
            f"got y {labels.shape} and groups {patients.shape}"
        )
    return labels.astype(np.int64), patients


def cross_validate_patients(
    sequences: Sequence[ArrayLike],
    y: ArrayLike,
    groups: ArrayLike,
    n_splits: int = 5,
    random_state: int = 0,
    n_boot: int = 1000,
    threshold: float = 0.5,
    **ensemble_params: Any,
) -> dict[str, Any]:
    """Out-of-fold P(COVID) and metrics for ``SoftVoteEnsemble(**ensemble_params)``.

    ``random_state`` seeds the fold split, the bootstrap and (unless given in
    ``ensemble_params``) the ensemble. Metrics are per sequence (one per study, normally one
    per patient); the 95 % bootstrap CIs resample patients, so several studies of one
    patient do not make the intervals look tighter than they are.

    Returns a dict with ``oof_proba`` (P(COVID) per input sequence), ``fold`` (test fold of
    each sequence), ``metrics`` (``binary_metrics`` keys: accuracy, sensitivity, specificity,
    f1, auc, n), ``ci95`` (metric → (low, high)), ``folds`` (per-fold sizes, metrics and the
    resampling actually applied), ``n_patients`` and ``params``.
    """
    labels, patients = _check_cv_inputs(sequences, y, groups)
    params = {"random_state": random_state, **ensemble_params}
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    oof = np.full(labels.shape[0], np.nan)
    fold_of = np.full(labels.shape[0], -1)
    folds: list[dict[str, Any]] = []
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, patients)):
        model = SoftVoteEnsemble(**params).fit(_take(sequences, train), labels[train])
        oof[test] = model.predict_proba(_take(sequences, test))[:, 1]
        fold_of[test] = k
        folds.append(
            {
                "fold": k,
                "n_train": int(train.size),
                "n_test": int(test.size),
                "n_test_patients": int(np.unique(patients[test]).size),
                "metrics": binary_metrics(labels[test], oof[test], threshold),
                "resample": model.resample_strategy_,
            }
        )
    metric_fn = partial(binary_metrics, threshold=threshold)
    cis = bootstrap_cis(labels, oof, metric_fn, n_boot=n_boot, seed=random_state, groups=patients)
    cis.pop("n", None)
    return {
        "oof_proba": oof,
        "fold": fold_of,
        "metrics": binary_metrics(labels, oof, threshold),
        "ci95": cis,
        "folds": folds,
        "n_patients": int(np.unique(patients).size),
        "params": params,
    }


def fit_final(
    sequences: Sequence[ArrayLike], y: ArrayLike, random_state: int = 0, **ensemble_params: Any
) -> SoftVoteEnsemble:
    """Fit the ensemble on every study (after CV has estimated its performance)."""
    return SoftVoteEnsemble(random_state=random_state, **ensemble_params).fit(sequences, y)
