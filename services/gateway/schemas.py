"""API request and response bodies (pydantic), the documented contract of ``/v1``."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, HttpUrl, field_validator

from services.common.config import get_settings
from services.common.urls import CallbackRefused, check_callback_url


def _iso_text_only(pattern: str, expected: str) -> BeforeValidator:
    """A query date or time must be written as ISO 8601: pydantic would also take a number
    as a Unix time."""
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(f"expected {expected}")
        return value

    return BeforeValidator(check)


IsoDate = Annotated[date, _iso_text_only(r"\d{4}-\d{2}-\d{2}", "a date as YYYY-MM-DD")]
IsoDateTime = Annotated[
    datetime,
    _iso_text_only(
        r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?",
        "a time as ISO 8601, e.g. 2026-12-04T10:00:00Z",
    ),
]

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


class SeriesCandidate(BaseModel):
    """One series of the upload and why it was or was not read."""

    model_config = ConfigDict(extra="allow")
    uid: str = Field(description="SeriesInstanceUID")
    description: str
    modality: str
    slices: int
    axial: bool | None
    excluded: str | None = Field(description="why the series cannot be read (localizer...)")
    not_used_because: str | None = Field(
        default=None,
        description="why this series was not the one read (null for the one read), e.g. "
        "'localizer', 'modality MR', 'fewer slices (3 vs 133)'",
    )


class SeriesOut(BaseModel):
    """What the verdict was computed on. DICOM identifiers are those stored after ingest: the
    pseudonyms when de-identification is on. Null where the input format has none."""

    model_config = ConfigDict(extra="allow")
    source_format: str | None = Field(default=None, description="dicom, nifti, image_set, image")
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    accession_number: str | None = None
    study_date: str | None = Field(default=None, description="DICOM StudyDate (YYYYMMDD)")
    patient_id: str | None = None
    series_description: str | None = None
    modality: str | None = None
    slice_thickness_mm: float | None = None
    instances: int | None = Field(default=None, description="images of the series read")
    slices: int | None = None
    reason: str | None = Field(default=None, description="why this series was chosen")
    candidates: list[SeriesCandidate] = Field(
        default_factory=list, description="every series of the upload, the one read included"
    )
    single_slice_of_series: bool = Field(
        default=False,
        description="one image was sent whose header says its series has more "
        "(ImagesInAcquisition > 1 or InstanceNumber > 1)",
    )
    single_slice_note: str | None = None
    orientation: dict[str, str] | None = Field(
        default=None,
        description="patient direction each image edge faces: {left, right, top, bottom} "
        "with R/L/A/P/H/F (from ImageOrientationPatient; NIfTI: radiological view)",
    )
    pixel_spacing_mm: list[float] | None = Field(default=None, description="[row, column]")
    slice_spacing_mm: float | None = None


class StudyOut(BaseModel):
    """The worklist columns of a job (null until preprocessing has read the study)."""

    patient_id: str | None = Field(description="PatientID (the pseudonym when de-identified)")
    accession_number: str | None
    study_date: str | None = Field(description="DICOM StudyDate (YYYYMMDD)")
    series_description: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    category: str | None = Field(
        description="the verdict's category: covid, indeterminate, other pneumonia, "
        "no pneumonia (RSNA pattern of an HU series), else the label in lower case"
    )


class JobResult(BaseModel):
    series: SeriesOut | None = Field(
        default=None, description="the study and series the verdict was computed on"
    )
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


class DeliveryOut(BaseModel):
    """The job's SR and SEG on their way to one of the tenant's result destinations."""

    destination: str = Field(description="the destination's name (`covidct tenants destinations`)")
    kind: Literal["dicomweb", "dimse", "fhir"]
    target: str = Field(description="the DICOMweb URL, or AE_TITLE@host:port")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    sent: dict[str, str] | None = Field(
        description="SOP Instance UIDs sent (sr, seg), or seg_not_sent with the reason; "
        "fhir: the DiagnosticReport's id"
    )
    last_error: str | None
    delivered_at: str | None


class JobOut(BaseModel):
    id: str
    status: JobStatusName
    stage: str | None
    external_id: str | None
    created_at: str
    updated_at: str
    error: JobError | None
    study: StudyOut
    result: JobResult | None
    deliveries: list[DeliveryOut] = Field(
        default=[],
        description="results sent to the tenant's PACS (GET /v1/jobs/{id} only; empty in lists)",
    )


class JobCreated(JobOut):
    upload_url: str
    callback_url: str | None


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class InputCropOut(BaseModel):
    """The square of the slice as read that the model's ``size`` x ``size`` input was cut
    from (it may reach past the slice's edges, which were padded). Input pixel (u, v) is
    native pixel (x0 + (u + 0.5) * side / size - 0.5, y0 + (v + 0.5) * side / size - 0.5)."""

    y0: int
    x0: int
    side: int
    size: int


class SliceOut(BaseModel):
    index: int = Field(description="position in the series as read (inferior to superior)")
    instance_number: int | None = Field(default=None, description="DICOM InstanceNumber")
    slice_location: float | None = Field(default=None, description="DICOM SliceLocation (mm)")
    sop_instance_uid: str | None = Field(default=None, description="DICOM SOPInstanceUID")
    file: str | None = Field(default=None, description="file of the upload it came from")
    frame: int | None = Field(default=None, description="frame of a multi-frame file")
    position_mm: float | None = Field(default=None, description="along the scan axis")
    rows: int | None = Field(default=None, description="native image height in pixels")
    columns: int | None = Field(default=None, description="native image width in pixels")
    image_url: str | None = Field(
        default=None,
        description="the slice at native resolution, PNG (append ?window=lung|mediastinal|W,L)",
    )
    lung_mask_url: str | None = Field(default=None, description="RGBA lung-mask overlay PNG")
    density_overlay_url: str | None = Field(
        default=None,
        description="RGBA PNG of the lung pixels in the ground-glass and consolidation HU "
        "ranges the CT pattern counts (HU studies only)",
    )
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
    lesion_overlay_url: str | None = Field(
        default=None,
        description="RGBA PNG of this slice's lesion masks at native resolution, to lay "
        "over image_url (ground glass amber, consolidation red); null without lesion masks",
    )
    gradcam_url: str | None = Field(
        default=None,
        description="RGBA PNG of the slice CNN's Grad-CAM at native resolution, to lay over "
        "image_url (explains the slice CNN's score, not the verdict); null when none",
    )
    input_crop: InputCropOut | None = Field(
        default=None,
        description="where the model's input (heatmap_url, lesions_url) was cut from the "
        "slice as read; null for dropped slices and older jobs",
    )


class SlicesOut(BaseModel):
    job_id: str
    slices_total: int | None
    slices_used: int | None
    has_lesions: bool = Field(
        default=False, description="the job has lesion masks (HU series): overlays exist"
    )
    native: Literal["hu", "gray"] | None = Field(
        default=None,
        description="what image_url serves: hu (windowed on the server) or gray (an image "
        "input shown as sent); null before preprocessing",
    )
    orientation: dict[str, str] | None = Field(
        default=None, description="patient direction of each image edge (see SeriesOut)"
    )
    pixel_spacing_mm: list[float] | None = None
    slices: list[SliceOut]


class JobEventOut(BaseModel):
    status: JobStatusName
    stage: str | None
    at: str = Field(description="when the job entered this status (ISO 8601)")


class JobEventsOut(BaseModel):
    job_id: str
    events: list[JobEventOut]
