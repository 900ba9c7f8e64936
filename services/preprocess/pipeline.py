"""From a read study to CNN-ready slices, recording every slice left out and why.

``prepare_slice`` is the one transformation applied to every slice the CNN ever sees,
training images included, so training and serving cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.common.errors import ErrorCode, StudyError
from services.preprocess.dedup import find_near_duplicates
from services.preprocess.enhance import enhance
from services.preprocess.gate import is_high_contrast
from services.preprocess.image_segmentation import lung_mask_2d
from services.preprocess.lesion_measurements import measure, slice_label_maps
from services.preprocess.lesions import segment_lesions
from services.preprocess.lung_features import patient_left_on_image_right, study_lung_features
from services.preprocess.segmentation import (
    crop_labels_to_lungs,
    crop_square,
    crop_to_lungs,
    lung_bbox,
    segment_lungs,
    segment_volume,
)
from services.preprocess.types import DropReason, Gray8, PreparedStudy, SliceDrop, Study

# How single images (not volumes) are segmented: "otsu" is segment_lungs as v1 was trained;
# "fov-aware" (image_segmentation.lung_mask_2d) also finds lungs in round-field-of-view
# exports and crops through the lungs. A slice model's config.json names the one it uses.
ImageSegmentation = Literal["otsu", "fov-aware"]


def segment_image(image: Gray8, method: ImageSegmentation = "otsu") -> np.ndarray:
    """Lung mask of one 2-D image by the named method."""
    if method == "fov-aware":
        return lung_mask_2d(image)
    if method == "otsu":
        return segment_lungs(image)
    raise ValueError(f"unknown image segmentation {method!r}")


@dataclass(frozen=True)
class PreprocessOptions:
    size: int = 224
    # The shipped model's config.json is authoritative; this default matches slice-cnn v1,
    # where HE then CLAHE won the validation probe (models/slice-cnn/v1/MODEL_CARD.md).
    enhancement: str = "he+clahe"
    # A slice counts as lung-bearing above this lung-area fraction (of the image).
    min_lung_fraction: float = 0.01
    drop_no_lung: bool = True
    drop_duplicates: bool = True
    duplicate_max_distance: int | None = None  # None: dedup module default
    # Original project's contrast gate: recorded always, routing (dropping) only on request.
    drop_high_contrast: bool = False
    image_segmentation: ImageSegmentation = "otsu"
    high_contrast_min_pixels: int = 1000
    # Quantitative HU features (services.preprocess.lung_features) for DICOM/NIfTI studies.
    lung_features: bool = True
    # Lesion masks and measurements (services.preprocess.lesions) for HU volumes with spacing.
    lesions: bool = True


def prepare_slice(
    image: Gray8,
    size: int,
    enhancement: str,
    mask: np.ndarray | None = None,
    min_lung_fraction: float = 0.02,
    segmentation: ImageSegmentation = "otsu",
) -> Gray8:
    """Segment (unless a mask is given), crop to the lungs, resize, enhance."""
    if mask is None:
        mask = segment_image(image, segmentation)
    if not _plausible_crop(mask):
        # One lung found in a tight figure crop would zoom onto a fragment: keep the whole image.
        mask = np.zeros_like(mask)
    crop = crop_to_lungs(image, mask, size, min_lung_fraction=min_lung_fraction)
    return enhance(crop, enhancement)  # type: ignore[arg-type]


def _plausible_crop(mask: np.ndarray, min_side: float = 0.35) -> bool:
    box = lung_bbox(mask, margin=0.0)
    if box is None:
        return False
    y0, y1, x0, x1 = box
    return max(y1 - y0, x1 - x0) >= min_side * min(mask.shape)


def preprocess_study(study: Study, options: PreprocessOptions | None = None) -> PreparedStudy:
    """Segment, gate, de-duplicate and crop every slice; raise ``no_lung`` if none is left."""
    options = options or PreprocessOptions()
    if len(study) == 0:
        raise StudyError(ErrorCode.EMPTY_STUDY, "the study holds no slices")

    volume_masks: np.ndarray | None
    if study.is_volume and len(study) > 2:
        volume_masks = segment_volume(np.stack(study.images))
        masks = list(volume_masks)
    else:
        masks = [segment_image(image, options.image_segmentation) for image in study.images]
        volume_masks = np.stack(masks) if len({m.shape for m in masks}) == 1 else None
    lung_fraction = [float(m.mean()) for m in masks]
    lung_features = None
    if options.lung_features and study.hu is not None and volume_masks is not None:
        lung_features = study_lung_features(study, volume_masks)
    lesion_findings, lesion_labels = None, None
    has_volume = study.is_volume and len(study) > 2 and volume_masks is not None
    if options.lesions and has_volume and study.hu is not None and study.spacing_mm is not None:
        lesion_masks = segment_lesions(
            study.hu,
            study.spacing_mm,
            patient_left_on_image_right=patient_left_on_image_right(study),
        )
        lesion_findings = measure(lesion_masks, study.hu)
        lesion_labels = slice_label_maps(lesion_masks)
    high_contrast = [
        is_high_contrast(image, min_pixels=options.high_contrast_min_pixels)
        for image in study.images
    ]

    dropped: dict[int, SliceDrop] = {}
    # Images, image sets and single slices are often tight crops with the lungs against the
    # border, where segmentation is unreliable: keep them (crop_to_lungs falls back to the
    # whole image) rather than refuse a slice the user sent on purpose. Volumes are trusted.
    drop_no_lung = (
        options.drop_no_lung and study.source_format in ("dicom", "nifti") and len(study) > 1
    )
    if drop_no_lung:
        for i, fraction in enumerate(lung_fraction):
            if fraction < options.min_lung_fraction:
                dropped[i] = SliceDrop(i, DropReason.NO_LUNG, f"lung fraction {fraction:.4f}")
    if options.drop_high_contrast:
        for i, flag in enumerate(high_contrast):
            if flag and i not in dropped:
                dropped[i] = SliceDrop(i, DropReason.HIGH_CONTRAST, "saturated pixels")
    if options.drop_duplicates:
        candidates = [i for i in range(len(study)) if i not in dropped]
        kwargs = {}
        if options.duplicate_max_distance is not None:
            kwargs["max_distance"] = options.duplicate_max_distance
        pairs = find_near_duplicates([study.images[i] for i in candidates], **kwargs)
        for drop_pos, keep_pos, distance in pairs:
            index, kept_index = candidates[drop_pos], candidates[keep_pos]
            dropped[index] = SliceDrop(
                index, DropReason.NEAR_DUPLICATE, f"hash distance {distance} to slice {kept_index}"
            )

    kept = [i for i in range(len(study)) if i not in dropped]
    if not kept:
        raise StudyError(ErrorCode.NO_LUNG, "no slice of the study shows lung tissue")
    inputs = np.stack(
        [
            prepare_slice(
                study.images[i],
                options.size,
                options.enhancement,
                mask=masks[i],
                min_lung_fraction=options.min_lung_fraction,
            )
            for i in kept
        ]
    )
    # Where each input was cut from its slice: the viewer draws the input's overlays
    # (Grad-CAM) on the slice as read through it.
    crops = [
        crop_square(
            masks[i] if _plausible_crop(masks[i]) else np.zeros_like(masks[i]),
            options.min_lung_fraction,
        )
        for i in kept
    ]
    lesion_maps = None
    if lesion_labels is not None:
        # Cut like the CNN input of the same slice (prepare_slice), so the overlay fits it.
        lesion_maps = np.stack(
            [
                crop_labels_to_lungs(
                    lesion_labels[i],
                    masks[i] if _plausible_crop(masks[i]) else np.zeros_like(masks[i]),
                    options.size,
                    min_lung_fraction=options.min_lung_fraction,
                )
                for i in kept
            ]
        )
    return PreparedStudy(
        inputs=inputs,
        kept=kept,
        dropped=sorted(dropped.values(), key=lambda d: d.index),
        high_contrast=high_contrast,
        lung_fraction=lung_fraction,
        slices_total=len(study),
        lung_features=lung_features,
        lesion_findings=lesion_findings,
        lesion_maps=lesion_maps,
        lesion_labels=None if lesion_labels is None else np.asarray(lesion_labels, np.uint8),
        lung_masks=[np.asarray(m, dtype=bool) for m in masks],
        input_crops=crops,
    )
