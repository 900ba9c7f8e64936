"""Is the slice scorer reachable? Asked by /readyz without loading any model in the gateway."""

from __future__ import annotations

import httpx

from services.common.celery_app import celery_app
from services.common.config import Settings, get_settings
from services.common.modelinfo import slice_model_dir


def scorer_ready(settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    if settings.scorer_url:
        try:
            response = httpx.get(f"{settings.scorer_url.rstrip('/')}/ping", timeout=2.0)
            return response.status_code == 200 and response.json().get("status") == "Healthy"
        except (httpx.HTTPError, ValueError):
            return False
    # In-process scorer: it runs inside the inference workers, so ask whether one answers.
    if not (slice_model_dir(settings) / "config.json").exists():
        return False
    try:
        return bool(celery_app.control.ping(timeout=1.0))
    except Exception:
        return False
