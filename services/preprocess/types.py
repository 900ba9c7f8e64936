"""Data passed between the preprocessing steps, the CNN and the ensemble."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Gray8 = NDArray[np.uint8]
SourceFormat = Literal["dicom", "nifti", "image_set", "image"]


@dataclass
class Study:
    """A study as read from disk: 8-bit lung-windowed slices in anatomical order.

    ``images`` all share one shape for volumes (DICOM, NIfTI); image sets may mix sizes.
    ``slice_info[i]`` describes ``images[i]`` (source file, instance number, position...).
    ``series`` records which series was chosen when the upload held several.
    ``hu`` holds the Hounsfield units of volume inputs (DICOM, NIfTI) as one (N, H, W) int16
    array in the order of ``images`` (clipped to the int16 range, NaN as air); it is None for
    PNG/JPEG inputs and for DICOM uploads whose slices differ in size.
    """

    images: list[Gray8]
    source_format: SourceFormat
    is_volume: bool
    slice_info: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, Any] | None = None
    spacing_mm: tuple[float, float, float] | None = None  # (slice, row, column)
    hu: NDArray[np.int16] | None = None

    def __len__(self) -> int:
        return len(self.images)


class DropReason(StrEnum):
    NO_LUNG = "no_lung"
    NEAR_DUPLICATE = "near_duplicate"
    HIGH_CONTRAST = "high_contrast"  # only when routing on the contrast gate is enabled


@dataclass(frozen=True)
class SliceDrop:
    index: int
    reason: DropReason
    detail: str = ""


@dataclass
class PreparedStudy:
    """CNN-ready slices of one study plus an account of every slice that was left out."""

    inputs: NDArray[np.uint8]  # (K, S, S) CNN inputs for the kept slices, in slice order
    kept: list[int]  # indices into Study.images
    dropped: list[SliceDrop]
    high_contrast: list[bool]  # per original slice
    lung_fraction: list[float]  # per original slice: lung pixels / image pixels
    slices_total: int
    # Quantitative lung features (services.preprocess.lung_features) when HU are available.
    lung_features: dict[str, Any] | None = None
    # Lesion measurements (services.preprocess.lesion_measurements) when HU and voxel spacing
    # are available, and the lesion label maps of the kept slices at the geometry of
    # ``inputs`` ((K, S, S) uint8: 0 none, 1 ground glass, 2 consolidation, 3 other lung).
    lesion_findings: dict[str, Any] | None = None
    lesion_maps: NDArray[np.uint8] | None = None
    # The same labels for every original slice at its own geometry ((N, H, W) uint8): the
    # source-aligned masks of the DICOM SEG.
    lesion_labels: NDArray[np.uint8] | None = None
    # Lung mask of every original slice (bool, the slice's own shape): the viewer's overlay.
    lung_masks: list[NDArray[np.bool_]] = field(default_factory=list)
    # Per kept slice, the (y0, x0, side) square of the slice as read that its input was cut
    # from and resized (services.preprocess.segmentation.crop_square).
    input_crops: list[tuple[int, int, int]] = field(default_factory=list)
