"""Patient-level verdict: a soft-voting ensemble of XGBoost and an RBF SVM.

Each member is an imbalanced-learn ``Pipeline``::

    SequenceFeaturizer → StandardScaler → AdaptiveSampler → classifier

imblearn pipelines run samplers only in ``fit``; ``predict``/``predict_proba`` skip them, so
when the ensemble is cross-validated, synthetic samples are made from training folds only and
test folds are never resampled. The scaler sits before the sampler in both members because
SMOTE and ENN are nearest-neighbour methods and need comparable feature scales.

Loading a saved model unpickles it: load only artefacts this project produced.
"""

from __future__ import annotations

import hashlib
import json
import platform
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
from imblearn.combine import SMOTEENN
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted
from xgboost import XGBClassifier

from services.ensemble.features import Kind, SequenceFeaturizer

Resample = Literal["none", "smote", "smoteenn"]
MODEL_FILE = "ensemble.joblib"
CONFIG_FILE = "config.json"
CONFIG_FORMAT = 1
_VERSIONED = ("numpy", "scipy", "scikit-learn", "imbalanced-learn", "xgboost", "joblib")
MEMBERS = ("xgb", "svm")


def _class_counts(y: NDArray[Any]) -> NDArray[np.int64]:
    return np.unique(y, return_counts=True)[1]


class AdaptiveSampler(BaseEstimator):
    """SMOTE or SMOTE+ENN that degrades gracefully when a class is tiny.

    * ``k_neighbors`` is lowered to ``minority - 1`` (SMOTE needs ``k < minority``).
    * With fewer than 2 minority samples (or one class) nothing is resampled.
    * ENN may delete a whole class (or leave one sample) on small or overlapping data; then
      plain SMOTE is used instead.

    ``strategy_`` records what was actually applied: ``"none"``, ``"smote"``, ``"smoteenn"``
    or ``"smote (smoteenn fallback)"``.
    """

    def __init__(
        self, method: Resample = "smoteenn", k_neighbors: int = 5, random_state: int | None = None
    ) -> None:
        self.method = method
        self.k_neighbors = k_neighbors
        self.random_state = random_state

    def fit_resample(self, X: NDArray[Any], y: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
        if self.method not in ("none", "smote", "smoteenn"):
            raise ValueError(f"resample must be none, smote or smoteenn, got {self.method!r}")
        counts = _class_counts(np.asarray(y))
        if self.method == "none" or counts.size < 2 or counts.min() < 2:
            self.strategy_ = "none"
            return X, y
        smote = SMOTE(
            k_neighbors=min(self.k_neighbors, int(counts.min()) - 1), random_state=self.random_state
        )
        if self.method == "smoteenn":
            X_res, y_res = SMOTEENN(smote=smote, random_state=self.random_state).fit_resample(X, y)
            counts_res = _class_counts(y_res)
            if counts_res.size == counts.size and counts_res.min() >= 2:
                self.strategy_ = "smoteenn"
                return X_res, y_res
            self.strategy_ = "smote (smoteenn fallback)"
        else:
            self.strategy_ = "smote"
        X_res, y_res = smote.fit_resample(X, y)
        return X_res, y_res


class CalibratedSVC(ClassifierMixin, BaseEstimator):
    """RBF SVC with Platt-scaled probabilities.

    Replaces ``SVC(probability=True)``, deprecated in scikit-learn 1.9, with the recommended
    ``CalibratedClassifierCV(SVC(), ensemble=False)``. The calibration CV uses
    ``min(cv, minority count)`` folds; with a single minority sample no CV is possible, so the
    sigmoid is fitted on the training decision values (in-sample, optimistic, but defined).
    """

    def __init__(
        self,
        C: float = 1.0,
        gamma: float | str = "scale",
        kernel: str = "rbf",
        cv: int = 5,
        random_state: int | None = None,
    ) -> None:
        self.C = C
        self.gamma = gamma
        self.kernel = kernel
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: NDArray[Any], y: NDArray[Any]) -> CalibratedSVC:
        svc = SVC(C=self.C, gamma=self.gamma, kernel=self.kernel)
        n_splits = min(self.cv, int(_class_counts(np.asarray(y)).min()))
        if n_splits >= 2:
            folds = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)
            self.calibrator_: Any = CalibratedClassifierCV(svc, cv=folds, ensemble=False).fit(X, y)
            self.svc_ = None
        else:
            self.svc_ = svc.fit(X, y)
            scores = self.svc_.decision_function(X).reshape(-1, 1)
            self.calibrator_ = LogisticRegression().fit(scores, y)
        self.classes_ = self.calibrator_.classes_
        return self

    def predict_proba(self, X: NDArray[Any]) -> NDArray[np.float64]:
        check_is_fitted(self, "calibrator_")
        if self.svc_ is None:
            return np.asarray(self.calibrator_.predict_proba(X), dtype=np.float64)
        scores = self.svc_.decision_function(X).reshape(-1, 1)
        return np.asarray(self.calibrator_.predict_proba(scores), dtype=np.float64)

    def predict(self, X: NDArray[Any]) -> NDArray[Any]:
        return np.asarray(self.classes_[np.argmax(self.predict_proba(X), axis=1)])


def _check_targets(y: ArrayLike, n: int) -> NDArray[np.int64]:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"y must be 1-D with one label per sequence ({n}), got shape {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"y must contain only 0 (NonCOVID) and 1 (COVID), got {np.unique(arr)}")
    if np.unique(arr).size < 2:
        raise ValueError("y needs both classes (0 = NonCOVID, 1 = COVID) to fit the ensemble")
    return arr.astype(np.int64)


class SoftVoteEnsemble(ClassifierMixin, BaseEstimator):
    """Weighted soft vote of an XGBoost and an RBF-SVM pipeline over sequence features.

    ``fit(sequences, y)`` takes a list of per-study probability arrays (see
    ``SequenceFeaturizer``) and labels 0 = NonCOVID, 1 = COVID. ``predict_proba`` is the
    ``weights``-weighted mean of the members' probabilities (order ``MEMBERS``: xgb, svm);
    ``predict`` calls COVID when P(COVID) >= 0.5.
    """

    def __init__(
        self,
        length: int = 32,
        kind: Kind = "linear",
        include_slice_count: bool = True,
        xgb_n_estimators: int = 200,
        xgb_max_depth: int = 3,
        xgb_learning_rate: float = 0.1,
        xgb_subsample: float = 0.8,
        xgb_colsample_bytree: float = 0.8,
        svm_C: float = 1.0,
        svm_gamma: float | str = "scale",
        svm_kernel: str = "rbf",
        weights: tuple[float, float] = (1.0, 1.0),
        resample: Resample = "smoteenn",
        smote_k_neighbors: int = 5,
        random_state: int | None = 0,
    ) -> None:
        self.length = length
        self.kind = kind
        self.include_slice_count = include_slice_count
        self.xgb_n_estimators = xgb_n_estimators
        self.xgb_max_depth = xgb_max_depth
        self.xgb_learning_rate = xgb_learning_rate
        self.xgb_subsample = xgb_subsample
        self.xgb_colsample_bytree = xgb_colsample_bytree
        self.svm_C = svm_C
        self.svm_gamma = svm_gamma
        self.svm_kernel = svm_kernel
        self.weights = weights
        self.resample = resample
        self.smote_k_neighbors = smote_k_neighbors
        self.random_state = random_state

    def _member(self, name: str) -> Pipeline:
        classifier: BaseEstimator
        if name == "xgb":
            classifier = XGBClassifier(
                n_estimators=self.xgb_n_estimators,
                max_depth=self.xgb_max_depth,
                learning_rate=self.xgb_learning_rate,
                subsample=self.xgb_subsample,
                colsample_bytree=self.xgb_colsample_bytree,
                tree_method="hist",
                n_jobs=1,  # shares the machine with CNN training and CV loops
                random_state=self.random_state,
            )
        else:
            classifier = CalibratedSVC(
                C=self.svm_C,
                gamma=self.svm_gamma,
                kernel=self.svm_kernel,
                random_state=self.random_state,
            )
        return Pipeline(
            [
                (
                    "features",
                    SequenceFeaturizer(
                        length=self.length,
                        kind=self.kind,
                        include_slice_count=self.include_slice_count,
                    ),
                ),
                ("scale", StandardScaler()),
                (
                    "sample",
                    AdaptiveSampler(self.resample, self.smote_k_neighbors, self.random_state),
                ),
                ("clf", classifier),
            ]
        )

    def _weights(self) -> NDArray[np.float64]:
        w = np.asarray(self.weights, dtype=np.float64)
        if w.shape != (len(MEMBERS),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"weights must be {len(MEMBERS)} non-negative numbers with a positive sum "
                f"(order {MEMBERS}), got {self.weights!r}"
            )
        return w

    def fit(self, sequences: Sequence[ArrayLike], y: ArrayLike) -> SoftVoteEnsemble:
        self._weights()
        labels = _check_targets(y, len(sequences))
        self.members_ = {name: self._member(name).fit(sequences, labels) for name in MEMBERS}
        self.classes_ = np.array([0, 1])
        first = self.members_[MEMBERS[0]].named_steps["features"]
        self.feature_names_out_ = first.get_feature_names_out()
        self.resample_strategy_ = {
            name: pipe.named_steps["sample"].strategy_ for name, pipe in self.members_.items()
        }
        return self

    def predict_proba(self, sequences: Sequence[ArrayLike]) -> NDArray[np.float64]:
        check_is_fitted(self, "members_")
        probs = np.stack([self.members_[name].predict_proba(sequences) for name in MEMBERS])
        return np.asarray(np.average(probs, axis=0, weights=self._weights()), dtype=np.float64)

    def predict(self, sequences: Sequence[ArrayLike]) -> NDArray[np.int64]:
        return np.asarray(self.classes_[(self.predict_proba(sequences)[:, 1] >= 0.5).astype(int)])

    def save(self, directory: str | Path) -> Path:
        """Write ``ensemble.joblib`` and ``config.json`` into ``directory``; return it."""
        check_is_fitted(self, "members_")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        model_path = out / MODEL_FILE
        joblib.dump(self, model_path)
        config = {
            "format": CONFIG_FORMAT,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "params": _jsonable(self.get_params()),
            "classes": self.classes_.tolist(),
            "members": list(MEMBERS),
            "feature_names": [str(f) for f in self.feature_names_out_],
            "resample_strategy": self.resample_strategy_,
            "versions": library_versions(),
            "sha256": _sha256(model_path),
        }
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> SoftVoteEnsemble:
        """Load a model written by ``save``; checks its checksum, warns on version drift."""
        src = Path(directory)
        config = json.loads((src / CONFIG_FILE).read_text())
        model_path = src / MODEL_FILE
        if config.get("sha256") != _sha256(model_path):
            raise ValueError(f"{model_path} does not match the checksum in {CONFIG_FILE}")
        current = library_versions()
        drift = {
            k: (v, current.get(k)) for k, v in config["versions"].items() if current.get(k) != v
        }
        if drift:
            # Pickles across library versions may load yet predict differently.
            warnings.warn(f"model saved with other library versions: {drift}", stacklevel=2)
        model = joblib.load(model_path)
        if not isinstance(model, cls):
            raise TypeError(f"{model_path} holds a {type(model).__name__}, not {cls.__name__}")
        return model


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    versions.update({name: metadata.version(name) for name in _VERSIONED})
    return versions


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_ensemble(directory: str | Path) -> SoftVoteEnsemble:
    """Module-level alias of ``SoftVoteEnsemble.load``."""
    return SoftVoteEnsemble.load(directory)
