"""What every room may know about the shipped models without loading them (read as data)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.common.config import Settings, get_settings

CLASS_NAMES = ("NonCOVID", "COVID")  # index order of every probability pair


@dataclass(frozen=True)
class SliceModelInfo:
    version: str
    image_size: int
    enhancement: str


def slice_model_dir(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.models_dir / "slice-cnn" / settings.slice_model_version


def ensemble_model_dir(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.models_dir / "ensemble" / settings.ensemble_model_version


def slice_model_info(settings: Settings | None = None) -> SliceModelInfo:
    config = json.loads((slice_model_dir(settings) / "config.json").read_text())
    return SliceModelInfo(
        version=config["version"],
        image_size=int(config["preprocess"]["size"]),
        enhancement=str(config["preprocess"]["enhancement"]),
    )
