"""API request and response bodies (pydantic), the documented contract of ``/v1``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from services.common.config import get_settings
from services.common.urls import CallbackRefused, check_callback_url

JobStatusName = Literal[
    "awaiting_upload",
    "queued",
    "preprocessing",
    "scoring",
    "ensembling",
    "succeeded",
    "failed",
    "cancelled",
]


# No C0/C1 control character (NUL, newline, escape...) in a free-text field.
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f-\x9f]*$"

# Bounds of integers in the API: what a signed 32-bit database column holds.
MAX_INT = 2**31 - 1


class Problem(BaseModel):
    """The body of every error response."""

    code: str = Field(description="stable machine-readable code, e.g. job_not_found")
    message: str
    details: Any = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callback_url: HttpUrl | None = None
    external_id: str | None = Field(
        default=None,
        max_length=200,
        pattern=NO_CONTROL_CHARS,
        description="Your reference for the study (no control characters).",
    )

    @field_validator("callback_url")
    @classmethod
    def _callback_policy(cls, value: HttpUrl | None) -> HttpUrl | None:
        """The static callback rules (no DNS here; names are checked at delivery)."""
        if value is not None:
            try:
                check_callback_url(str(value), get_settings())
            except CallbackRefused as exc:
                raise ValueError(exc.reason) from None
        return value


class JobError(BaseModel):
    code: str
    message: str


class JobResult(BaseModel):
    label: str
    probabilities: dict[str, float]
    slices_total: int
    slices_used: int
    model_versions: dict[str, str]
    findings: dict[str, Any] | None = Field(
        default=None,
        description="Quantitative lung findings from HU (DICOM/NIfTI), null for image inputs. "
        "Ensemble v3: the lesion measurements (opacity_percent, high_opacity_percent, volumes "
        "in mL, zone_opacity_percent, severity_score 0-24, slice_lesion_share...), the RSNA "
        "pattern with its reasons and category (covid, other_pneumonia, no_pneumonia, "
        "indeterminate); see the README section on findings.",
    )


class JobOut(BaseModel):
    id: str
    status: JobStatusName
    stage: str | None
    external_id: str | None
    created_at: str
    updated_at: str
    error: JobError | None
    result: JobResult | None


class JobCreated(JobOut):
    upload_url: str
    callback_url: str | None


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class SliceOut(BaseModel):
    index: int
    kept: bool
    drop_reason: str | None
    drop_detail: str | None
    high_contrast: bool
    lung_fraction: float
    probabilities: dict[str, float] | None
    model_version: str | None
    heatmap_url: str | None
    lesion_share: float | None = Field(
        default=None,
        description="lesion (ground glass + consolidation) share of this slice's lung area, "
        "0..1, for HU series with lesion masks; null otherwise",
    )
    lesions_url: str | None = Field(
        default=None,
        description="RGBA PNG overlay of this kept slice's lesions (ground glass amber, "
        "consolidation red), the geometry of the slice PNG; null without lesion masks",
    )


class SlicesOut(BaseModel):
    job_id: str
    slices_total: int | None
    slices_used: int | None
    has_lesions: bool = Field(
        default=False, description="the job has lesion masks (HU series): overlays exist"
    )
    slices: list[SliceOut]


class JobEventOut(BaseModel):
    status: JobStatusName
    stage: str | None
    at: str = Field(description="when the job entered this status (ISO 8601)")


class JobEventsOut(BaseModel):
    job_id: str
    events: list[JobEventOut]
