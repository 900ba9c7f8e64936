"""Settings read from the environment (prefix ``COVIDCT_``), one place for every knob."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COVIDCT_", env_file=".env", extra="ignore")

    # Shared, never-committed data sets (../shared/data beside the checkout).
    data_dir: Path = REPO_ROOT.parent / "shared" / "data"
    # Shipped, versioned model artefacts.
    models_dir: Path = REPO_ROOT / "models"
    slice_model_version: str = "v1"
    ensemble_model_version: str = "v1"

    # Input limits: a hospital upload must never exhaust disk or memory.
    max_slices: int = 1000
    max_uncompressed_bytes: int = 4 * 1024**3
    max_compression_ratio: float = 200.0
    max_archive_members: int = 20_000

    log_level: str = "INFO"
    log_json: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
