"""Is this a chest CT at all? One check, run on every study read, before any scoring.

:func:`check_chest_ct` raises ``StudyError(ErrorCode.NOT_CHEST_CT, ...)`` when a study is
clearly not a chest CT, so that the service abstains instead of scoring a photograph or a head
scan. It is deliberately lenient: it must refuse noise, photographs, radiographs and scans of
other body regions, and must never refuse a real chest CT, however it was cropped, windowed
or re-encoded. Evidence, in order:

1. **DICOM header** (when the study came from DICOM): Modality must be CT (series of other
   modalities never get here: the reader already refuses them as ``no_ct_series``, the
   public contract for uploads without a CT series; a study built with another modality is
   refused here). BodyPartExamined / StudyDescription naming only a region outside the chest
   (head, brain, neck, spine, pelvis, limbs...) refuses. Abdomen descriptions do not refuse
   on their own: abdominal CT shows the lung bases (the COVID-19-NY-SBU slices are from
   "CT ABD AND PELVIS" studies), so the pixels decide (step 2). A header that names the chest
   (chest, thorax, lung...) is trusted: step 2's lung-field test is then skipped.
2. **HU profile** (DICOM and NIfTI): enough air/lung density (−1100…−500 HU), soft tissue
   (−200…+200 HU), not noise, and a lung field (air-density region inside the body) in at
   least :data:`MIN_LUNG_SLICE_SHARE` of the slices (at least one for short stacks).
3. **Image profile** (PNG/JPEG, 8-bit grey of unknown windowing): not noise (low
   high-frequency energy), CT texture (:mod:`services.preprocess.ct_texture`: not flat like a
   drawing or chart, pixel noise or fine structure like no smoothed noise or projection,
   detail inside regions and not only along outlines, no smooth shading like the light
   across a photographed scene; also required of DICOM/NIfTI stacks
   of fewer than :data:`MIN_STACK_FOR_LUNG` slices) and a lung field: a dark region of the
   foreground, enclosed by brighter tissue rather than running into the image border,
   covering at least :data:`MIN_FIELD_SHARE` of the foreground, and not cut into strips (a
   radiograph's lung fields are crossed by ribs; a CT's are not). Uniform black surroundings
   (a round field of view, screenshot padding, lungs masked out of the body) are left out as
   background first.

Images smaller than :data:`MIN_JUDGED_SIDE` pixels are not judged (too little to tell; the
readers' unit tests use such thumbnails). Image sets and volumes are refused only when most
slices fail, so a stray localizer-like image does not refuse a study.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from services.common.errors import ErrorCode, StudyError
from services.preprocess.ct_texture import texture_features
from services.preprocess.types import Gray8, Study

MIN_JUDGED_SIDE = 64
WORK_SIDE = 256
MAX_HF = 0.3  # mean |x - 3x3 mean| / std; iid noise ~0.75, real CT images <= 0.18
MIN_FIELD_SHARE = 0.01  # enclosed dark regions / foreground; real CT down to ~0.015
MAX_BORDER_TOUCH = 0.35  # share of a region's outline lying on the image border
MAX_FIELD_REGIONS = 10  # regions of >= 0.5 % of the foreground; real CT <= 8, ribs make more
MAX_COLOURFULNESS = 40.0  # Hasler-Süsstrunk; UCSD paper figures <= 24, photographs 30-100+
MIN_AIR_SHARE = 0.02  # voxels at -1100..-500 HU (air outside the body, lung)
MIN_TISSUE_SHARE = 0.05  # voxels at -200..+200 HU
MIN_BODY_LUNG_SHARE = 0.01  # air-density pixels inside the body / body area, per slice
MIN_LUNG_SLICE_SHARE = 0.2  # of the slices of a stack of >= MIN_STACK_FOR_LUNG slices
MIN_STACK_FOR_LUNG = 5
MIN_SKULL_COVERAGE = 0.75  # directions with bone near the outline; heads 0.86-1, chests <= 0.38
MAX_FAILING_IMAGE_SHARE = 0.5  # image sets: refused when more than this share fails
# CT texture (services.preprocess.ct_texture), issue 18: drawings, smoothed noise, projections,
# text and charts. Chosen on the generated non-CT kinds (tests/support/nonct.py) with a margin
# to the real sets (services/training/ct_gate_eval.py prints both); values in brackets are
# [highest generated non-CT that must fail, lowest real CT source's 0.5 % quantile] at 256 px.
MAX_FLAT_SHARE = 0.6  # [drawings, charts >= 0.69; img512 <= 0.49]
MIN_DETAIL = 0.045  # [projections, smoothed noise <= 0.032; real >= 0.064 (mosmed)]
MIN_INTERIOR_DETAIL = 0.006  # [smooth-noise drawing <= 0.004; lung-masks (smoothed) >= 0.010]
MAX_SHADING_SHARE = 0.2  # [grey photos >= 0.24 (a lit room); ucsd <= 0.137, others <= 0.112]
MIN_DETAIL_RANGE = 40.0  # grey range below which detail is not judged (faint img512 exports
# have ranges from ~20; every generated smooth kind spans >= 90 levels)

_NOT_CHEST = re.compile(
    r"\b(head|brain|skull|cranial|cranium|neuro|sinus(es)?|orbits?|face|facial|dental|teeth|"
    r"mandible|neck|c-?spine|cervical|l-?spine|lumbar|sacrum|pelvis|pelvic|hip|hips|knee|"
    r"ankle|foot|feet|leg|legs|arm|arms|hand|hands|wrist|elbow|shoulder|extremity|"
    r"extremities|femur|tibia|humerus)\b",
    re.IGNORECASE,
)
_ABDOMEN = re.compile(r"\b(abd|abdomen|abdominal|liver|kidneys?|renal|bowel)\b", re.IGNORECASE)
_CHEST = re.compile(
    r"(chest|thorax|thorac|thor\b|thx|lungs?|pulmo|pulmonary|torso|wholebody|whole body|"
    r"\bcap\b|tórax|torax)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Verdict:
    """Outcome of the check: ``ok`` or the reason a study is not a chest CT."""

    ok: bool
    reason: str = ""
    details: dict[str, Any] | None = None


def check_chest_ct(study: Study) -> None:
    """Raise ``not_chest_ct`` unless ``study`` is plausibly a chest CT (see module doc)."""
    verdict = assess(study)
    if not verdict.ok:
        raise StudyError(ErrorCode.NOT_CHEST_CT, verdict.reason)


def assess(study: Study) -> Verdict:
    """The check without raising: what :func:`check_chest_ct` decides, and why."""
    header_says_chest = False
    if study.source_format == "dicom" and study.series is not None:
        modality = str(study.series.get("modality") or "").upper()
        if modality and modality != "CT":
            return Verdict(False, f"modality {modality}, not CT")
        verdict, header_says_chest = _header_verdict(study.series)
        if not verdict.ok:
            return verdict
    if study.hu is not None:
        return _hu_verdict(study.hu, header_says_chest)
    return _images_verdict(study.images, study.slice_info)


# --- header --------------------------------------------------------------------------------


def _header_verdict(series: dict[str, Any]) -> tuple[Verdict, bool]:
    texts = [
        str(series.get(key) or "")
        for key in ("body_part_examined", "study_description", "series_description")
    ]
    text = " ".join(t.replace("_", " ").replace("^", " ") for t in texts)
    chest = bool(_CHEST.search(text))
    other = _NOT_CHEST.search(text)
    if other and not chest and not _ABDOMEN.search(text):
        return Verdict(
            False, f"the DICOM header names another body region: {other.group(0)!r}"
        ), False
    return Verdict(True), chest


# --- HU ------------------------------------------------------------------------------------


def _hu_verdict(hu: NDArray[np.int16], header_says_chest: bool) -> Verdict:
    n, h, w = hu.shape
    if min(h, w) < MIN_JUDGED_SIDE:
        return Verdict(True, "too small to judge")
    step = max(1, round(max(h, w) / 256))
    sample = hu[:, ::step, ::step]  # 256 px per side is plenty for shares
    air = float(np.mean((sample >= -1100) & (sample < -500)))
    tissue = float(np.mean((sample >= -200) & (sample <= 200)))
    details = {"air_share": round(air, 4), "tissue_share": round(tissue, 4)}
    if air < MIN_AIR_SHARE:
        return Verdict(False, f"hardly any air or lung density ({air:.1%} of voxels)", details)
    if tissue < MIN_TISSUE_SHARE:
        return Verdict(False, f"hardly any soft tissue ({tissue:.1%} of voxels)", details)
    from services.preprocess.windowing import window_to_uint8

    noisy = sum(_high_frequency(window_to_uint8(s)) > MAX_HF for s in sample)
    if noisy > n / 2:
        return Verdict(False, "the slices look like noise, not like CT", details)
    if header_says_chest:
        return Verdict(True, "chest CT by its DICOM header", details)
    bodies = [_body(s) for s in sample]
    skulls = sum(
        _skull_ring(s, b) >= MIN_SKULL_COVERAGE for s, b in zip(sample, bodies, strict=True)
    )
    details["skull_slices"] = int(skulls)
    if skulls > n / 2:
        return Verdict(False, "a bone ring encloses the body: a head CT", details)
    if n < MIN_STACK_FOR_LUNG:
        # One slice (or a few) in HU is CT, but not necessarily at lung level: the
        # COVID-19-NY-SBU "chest" slices include an upper-abdomen one without lung. What a
        # short stack must show is CT texture: a drawing saved as DICOM/NIfTI in HU has the
        # right densities but flat or smooth regions (the image rules, lung window).
        refusals = [_texture_refusal(texture_features(_to_work(window_to_uint8(s)))) for s in hu]
        failing = [r for r in refusals if r]
        if len(failing) > MAX_FAILING_IMAGE_SHARE * n:
            return Verdict(False, failing[0], details)
        return Verdict(True, "short stack: CT by its HU profile", details)
    with_lung = sum(
        _lung_share(s, b) >= MIN_BODY_LUNG_SHARE for s, b in zip(sample, bodies, strict=True)
    )
    details["slices_with_lung"] = int(with_lung)
    if with_lung < MIN_LUNG_SLICE_SHARE * n:
        return Verdict(
            False, f"no lung field: {with_lung} of {n} slices show air-filled lung", details
        )
    return Verdict(True, "", details)


def _body(hu: NDArray[np.int16]) -> NDArray[np.uint8]:
    """The body: largest region above -400 HU, closed, holes filled (0/1)."""
    tissue = (hu > -400).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(tissue, connectivity=8)
    if count <= 1:
        return np.zeros(hu.shape, np.uint8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    body = (labels == best).astype(np.uint8)
    body = np.asarray(cv2.morphologyEx(body, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)))
    return _fill(body)


def _lung_share(hu: NDArray[np.int16], body: NDArray[np.uint8]) -> float:
    """Air-density pixels (< -400 HU) inside the body, as a share of the body area."""
    area = int(body.sum())
    if not area:
        return 0.0
    return float(np.count_nonzero((hu < -400) & (body > 0))) / area


def _skull_ring(hu: NDArray[np.int16], body: NDArray[np.uint8]) -> float:
    """Share of directions (from the body's centre) in which bone (> 300 HU) lies in the
    outer 15 % of the body: ~1 for a skull, well below for chest (ribs), abdomen, neck."""
    area = int(body.sum())
    if area < 200:
        return 0.0
    radius = np.sqrt(area / np.pi)
    k = max(3, int(0.3 * radius) | 1)  # erosion by ~15 % of the radius
    inner = cv2.erode(body, np.ones((k, k), np.uint8))
    band = (body > 0) & (inner == 0) & (hu > 300)
    ys, xs = np.nonzero(body)
    cy, cx = float(ys.mean()), float(xs.mean())
    by, bx = np.nonzero(band)
    if by.size == 0:
        return 0.0
    angles = np.arctan2(by - cy, bx - cx)
    bins = np.unique(((angles + np.pi) / (2 * np.pi) * 72).astype(int) % 72)
    return float(bins.size) / 72.0


def _fill(mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2)
    return (padded[1:-1, 1:-1] != 2).astype(np.uint8)


# --- images --------------------------------------------------------------------------------


def _images_verdict(images: list[Gray8], slice_info: list[dict[str, Any]]) -> Verdict:
    colours = [
        float(slice_info[i].get("colourfulness") or 0.0) if i < len(slice_info) else 0.0
        for i in range(len(images))
    ]
    judged = [
        (im, colour)
        for im, colour in zip(images, colours, strict=True)
        if min(im.shape[:2]) >= MIN_JUDGED_SIDE
    ]
    if not judged:
        return Verdict(True, "too small to judge")
    verdicts = [image_verdict(im, colour) for im, colour in judged]
    failing = [v for v in verdicts if not v.ok]
    if len(failing) > MAX_FAILING_IMAGE_SHARE * len(judged):
        first = failing[0]
        prefix = "" if len(judged) == 1 else f"{len(failing)} of {len(judged)} images: "
        return Verdict(False, prefix + first.reason, first.details)
    return Verdict(True)


def image_verdict(image: Gray8, colour: float = 0.0) -> Verdict:
    """One 8-bit grey image: CT-like (grey, smooth, with a lung field) or not.

    ``colour`` is the colourfulness of the file before it was turned grey (the readers record
    it in ``slice_info``): CT is grey; a colourful picture is a photograph or a drawing.
    """
    details: dict[str, Any] = {"colourfulness": round(colour, 1)}
    if colour > MAX_COLOURFULNESS:
        return Verdict(False, f"a colour picture (colourfulness {colour:.0f}), not CT", details)
    work = _to_work(image)
    hf = _high_frequency(work)
    details["high_frequency"] = round(hf, 3)
    if hf > MAX_HF:
        return Verdict(
            False, f"the image looks like noise (high-frequency energy {hf:.2f})", details
        )
    texture = texture_features(work)
    details.update(texture)
    refusal = _texture_refusal(texture)
    if refusal:
        return Verdict(False, refusal, details)
    field = lung_field(work)
    details.update(field)
    if field["share"] < MIN_FIELD_SHARE:
        return Verdict(False, "no lung field: no dark region enclosed by brighter tissue", details)
    if field["regions"] > MAX_FIELD_REGIONS:
        return Verdict(
            False, f"the dark field is cut into {field['regions']} strips (radiograph?)", details
        )
    return Verdict(True, "", details)


def _texture_refusal(texture: dict[str, float]) -> str:
    """Why the image lacks CT texture (see services.preprocess.ct_texture), or ''."""
    if texture["flat_share"] > MAX_FLAT_SHARE:
        share = texture["flat_share"]
        return f"{share:.0%} of the image is flat grey (a drawing, chart or screenshot), not CT"
    if texture["grey_range"] < MIN_DETAIL_RANGE:
        return ""  # too faint for an absolute detail step: judged by the lung field alone
    if texture["shading_share"] > MAX_SHADING_SHARE:
        share = texture["shading_share"]
        return f"{share:.0%} of the textured image is smooth shading (a photograph), not CT"
    if texture["detail"] < MIN_DETAIL:
        return "no noise or fine structure anywhere (smoothed noise or a projection), not CT"
    if texture["interior_detail"] < MIN_INTERIOR_DETAIL:
        return "fine detail only along outlines, smooth inside (a drawing), not a CT scan"
    return ""


def _to_work(image: Gray8) -> Gray8:
    if image.ndim == 3:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
    h, w = image.shape
    scale = WORK_SIDE / max(h, w)
    if scale >= 1.0:
        return np.ascontiguousarray(image)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _high_frequency(image: Gray8) -> float:
    """Mean absolute deviation from the 3x3 mean, relative to the image's spread."""
    f = image.astype(np.float32)
    std = float(f.std())
    if std < 1.0:
        return 0.0
    return float(np.abs(f - cv2.blur(f, (3, 3))).mean()) / std


def lung_field(work: Gray8) -> dict[str, Any]:
    """Dark regions of the foreground enclosed by brighter tissue.

    Background = near-black pixels connected to the image border, when they are at least 5 %
    of the image (outside a round field of view, padding, masked-out body). The foreground is
    split at its Otsu threshold; dark regions of at least 0.5 % of the foreground whose
    outline lies mostly away from the image border (at most ``MAX_BORDER_TOUCH``) form the
    field. Returns ``share`` (field / foreground) and ``regions`` (how many).
    """
    h, w = work.shape
    smooth = _stretch(np.asarray(cv2.GaussianBlur(work, (0, 0), 1.0), dtype=np.uint8))
    low = int(smooth.min())
    near_black = (smooth <= low + 4).astype(np.uint8)
    background = np.zeros((h, w), bool)
    count, labels, _, _ = cv2.connectedComponentsWithStats(near_black, connectivity=8)
    if count > 1:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        edge = edge[edge > 0]
        candidate = np.isin(labels, edge)
        if candidate.mean() >= 0.05:
            background = candidate
    foreground = ~background
    fg_area = int(foreground.sum())
    frame = np.zeros((h, w), bool)
    frame[0], frame[-1], frame[:, 0], frame[:, -1] = True, True, True, True
    if background.any():
        masked = _masked_lungs(foreground, frame)
        if masked:
            # Lungs masked out of the body onto black: the foreground is the lung field.
            return {"share": 1.0, "regions": masked, "masked": True}
    if fg_area < 0.1 * h * w:
        return {"share": 0.0, "regions": 0}
    values = smooth[foreground].reshape(-1, 1)
    otsu, _ = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Otsu, and halfway down to the darkest foreground value: in a mediastinal window, fat
    # is dark too and joins the lungs to the air outside at Otsu's threshold.
    best = {"share": 0.0, "regions": 0}
    for threshold in (otsu, (float(values.min()) + otsu) / 2.0):
        found = _enclosed_dark(smooth, foreground, fg_area, threshold, frame)
        if found["share"] > best["share"]:
            best = found
    return best


def _enclosed_dark(
    smooth: Gray8,
    foreground: NDArray[np.bool_],
    fg_area: int,
    threshold: float,
    frame: NDArray[np.bool_],
) -> dict[str, Any]:
    dark = (foreground & (smooth <= threshold)).astype(np.uint8)
    dark = np.asarray(cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=4)
    field, regions = 0, 0
    for lab in range(1, count):
        area = int(stats[lab, cv2.CC_STAT_AREA])
        if area < 0.005 * fg_area:
            continue
        comp = labels == lab
        if _border_touch(comp, frame) > MAX_BORDER_TOUCH:
            continue
        field += area
        regions += 1
    return {"share": round(field / fg_area, 4), "regions": regions}


def _stretch(image: Gray8) -> Gray8:
    """Contrast stretch 0.5..99.5 percentiles to 0..255 (faint, low-contrast screenshots)."""
    low, high = np.percentile(image, (0.5, 99.5))
    if high - low < 1:
        return image
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _border_touch(comp: NDArray[np.bool_], frame: NDArray[np.bool_]) -> float:
    """Share of a region's outline that lies on the image border."""
    contours, _ = cv2.findContours(comp.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = sum(len(c) for c in contours)
    return int((comp & frame).sum()) / max(1, outline)


def _masked_lungs(foreground: NDArray[np.bool_], frame: NDArray[np.bool_]) -> int:
    """1-4 blobs of 2-35 % of the image each, clear of the image border, on black: lungs
    already masked out of the body. Returns how many (0: not that picture)."""
    h, w = foreground.shape
    if foreground.mean() > 0.6:
        return 0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        foreground.astype(np.uint8), connectivity=8
    )
    areas = stats[1:, cv2.CC_STAT_AREA] / float(h * w)
    big = [lab for lab in range(1, count) if areas[lab - 1] >= 0.02]
    if not 1 <= len(big) <= 4 or float(areas.sum()) - sum(areas[b - 1] for b in big) > 0.05:
        return 0
    for lab in big:
        if areas[lab - 1] > 0.35 or _border_touch(labels == lab, frame) > 0.02:
            return 0
    return len(big)
