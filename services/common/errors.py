"""Errors a user can cause, each with a stable machine-readable code.

The CLI prints ``error: <code>: <message>`` and exits 2; the service stores the code on a
``failed`` job. Codes are part of the public contract: never rename one.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT_FILE = "corrupt_file"
    NO_CT_SERIES = "no_ct_series"
    EMPTY_STUDY = "empty_study"
    TOO_MANY_SLICES = "too_many_slices"
    UNSAFE_ARCHIVE = "unsafe_archive"
    NO_LUNG = "no_lung"
    NOT_CHEST_CT = "not_chest_ct"  # the study is not a chest CT (photo, radiograph, head...)
    MULTIPLE_PATIENTS = "multiple_patients"  # instances of more than one patient in one upload
    # Service-level codes (stored on failed jobs).
    CHECKSUM_MISMATCH = "checksum_mismatch"
    UPLOAD_EXPIRED = "upload_expired"  # the job never received a complete upload
    SCORER_UNAVAILABLE = "scorer_unavailable"
    INTERNAL_ERROR = "internal_error"
    # A stage lost its worker stage_max_attempts times (the study may crash workers); the
    # raw upload and the events are kept as evidence until the derived-data retention.
    STAGE_CRASHED = "stage_crashed"


class StudyError(Exception):
    """A study that cannot be diagnosed because of what the user sent."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}
