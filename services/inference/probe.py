"""Scorer readiness without loading a model or importing torch: the inference worker's
control command and its Kubernetes readiness probe (``covidct probe scorer``) use it.

The probe caches its answer in a small file for ``max_age_s``: the kubelet execs it every
period, and a burst of probes must not become a burst of TorchServe pings.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

from services.common.config import Settings

PING_TIMEOUT_S = 5.0


def scorer_reachable(settings: Settings) -> bool:
    """Cheap readiness: TorchServe answers ``/ping`` Healthy, or the in-process model's files
    exist. Never loads a model (it runs in a worker's main process, which forks the pool)."""
    if settings.scorer_url:
        try:
            response = httpx.get(f"{settings.scorer_url.rstrip('/')}/ping", timeout=PING_TIMEOUT_S)
            return response.status_code == 200 and response.json().get("status") == "Healthy"
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
    config = settings.slice_model_dir / "config.json"
    try:
        members = json.loads(config.read_text())["members"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((settings.slice_model_dir / name).is_file() for name in members)


def cached_scorer_ready(settings: Settings, cache: Path, max_age_s: float) -> bool:
    """``scorer_reachable``, answered from ``cache`` while it is younger than ``max_age_s``."""
    try:
        if time.time() - cache.stat().st_mtime < max_age_s:
            return bool(json.loads(cache.read_text())["ready"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or a torn one: check again
    ready = scorer_reachable(settings)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}")
        partial.write_text(json.dumps({"ready": ready}))
        partial.replace(cache)  # atomic: a concurrent probe reads the old or the new answer
    except OSError:
        pass  # an unwritable cache only costs a ping per probe
    return ready
