"""``covidct probe scorer``: the inference worker's readiness, cached, loading no model."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.config import Settings
from services.inference.probe import cached_scorer_ready, scorer_reachable


def test_in_process_scorer_is_ready_when_its_files_exist_and_the_answer_is_cached(
    tmp_path: Path,
) -> None:
    settings = Settings(var_dir=tmp_path / "var", models_dir=tmp_path / "models", scorer_url=None)
    models = settings.slice_model_dir
    cache = tmp_path / "probe" / "scorer.json"
    assert scorer_reachable(settings) is False
    assert cached_scorer_ready(settings, cache, max_age_s=60) is False
    models.mkdir(parents=True)
    (models / "config.json").write_text(json.dumps({"members": ["a.pt"]}))
    (models / "a.pt").write_bytes(b"x")
    assert scorer_reachable(settings) is True
    assert cached_scorer_ready(settings, cache, max_age_s=60) is False  # still the cached answer
    assert cached_scorer_ready(settings, cache, max_age_s=0) is True  # stale: checked again
    assert json.loads(cache.read_text()) == {"ready": True}


def test_torchserve_that_does_not_answer_is_not_ready(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", scorer_url="http://127.0.0.1:9")
    assert scorer_reachable(settings) is False
