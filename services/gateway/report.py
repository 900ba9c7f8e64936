"""``GET /v1/jobs/{id}/report.pdf``: a printable report of one finished job (fpdf2).

What a reader of the printout needs without the console: the verdict and its category, the
measurements behind it, key images with their overlays, the study and series identifiers it
was computed on, the model versions, and the research-use statement. Key images are the three
slices with the largest lesion share of the lung (where the lesion segmenter ran), else with
the largest share in the ground-glass HU range (HU studies), else the three kept slices the
slice CNN scored highest; each is the native slice in the lung window
with the lung outlined and the verdict's lesion masks tinted (ground glass, consolidation), or
without them the HU range the pattern counted as ground glass.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
from fastapi import APIRouter, Response
from fpdf import FPDF
from numpy.typing import NDArray
from PIL import Image
from sqlalchemy import select

from services.common.config import get_settings
from services.common.jobs import job_view
from services.common.native_slices import (
    WINDOWS,
    apply_window,
    decode_label_map,
    decode_mask,
    decode_native,
    native_blob_key,
)
from services.common.orm import Job, JobStatus, SliceRecord, SliceScore
from services.common.storage import make_storage
from services.gateway.auth import ApiKeyDep, tenant_session
from services.gateway.errors import ApiError, error_responses
from services.gateway.jobs import NOT_FOUND, JobId, get_tenant_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422, 429, 503))

RESEARCH_USE = (
    "Research software, not a medical device. This report must not be used to make or "
    "support a diagnosis or treatment decision; a radiologist reads the images."
)
KEY_IMAGES = 3
GGO_HU_DEFAULT = (-700, -300)  # services.preprocess.lung_features: -700 <= HU < -300
GGO_RGB = (255, 140, 0)
CONSOLIDATION_RGB = (220, 38, 38)
GGO_LABEL, CONSOLIDATION_LABEL = 1, 2  # lesion label maps (services.common.native_slices)
LUNG_EDGE_RGB = (0, 200, 255)
# Core PDF fonts are Latin-1: the few other characters our texts use, spelt out.
_PLAIN = str.maketrans({"−": "-", "–": "-", "—": "-", "…": "...", "≥": ">=", "≤": "<=",
                        "’": "'", "‘": "'", "“": '"', "”": '"', "→": "->", "²": "2"})  # fmt: skip


@router.get(
    "/{job_id}/report.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}, **error_responses(409), **NOT_FOUND},
)
def get_report(job_id: JobId, key: ApiKeyDep) -> Response:
    """A PDF report of a succeeded job (409 ``job_not_finished`` before that)."""
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        if job.status != JobStatus.SUCCEEDED or job.result is None:
            raise ApiError(
                409, "job_not_finished", f"job {job_id} is {job.status}; a report needs a verdict"
            )
        view = job_view(job)
        rows = session.scalars(
            select(SliceRecord).where(SliceRecord.job_id == job_id).order_by(SliceRecord.index)
        ).all()
        infos = {r.index: (r.info or {}) for r in rows if r.kept}
        scores = _covid_scores(session, job)
        ggo_range = _ggo_range(job.lung_features)
    images = _key_images(job_id, infos, scores, ggo_range)
    pdf = render_report(view, images, ggo_range)
    filename = f"covidct-report-{job_id}.pdf"
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{filename}"',
            "Cache-Control": "private, no-store",
        },
    )


def _covid_scores(session: Any, job: Job) -> dict[int, float]:
    version = job.result.model_versions.get("slice_cnn") if job.result else None
    query = select(SliceScore).where(SliceScore.job_id == job.id)
    if version:
        query = query.where(SliceScore.model_version == version)
    return {s.slice_index: float(s.p_covid) for s in session.scalars(query)}


def _ggo_range(features: dict[str, Any] | None) -> tuple[int, int]:
    value = (features or {}).get("ggo_hu")
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    return GGO_HU_DEFAULT


# --- key images ----------------------------------------------------------------------------


def _key_images(
    job_id: str, infos: dict[int, dict[str, Any]], scores: dict[int, float], ggo: tuple[int, int]
) -> list[tuple[dict[str, Any], Image.Image]]:
    """Up to three (caption facts, RGB image) of the kept slices, the most telling first:
    by the verdict's lesion share of the lung where the lesion segmenter ran, else by the
    ground-glass HU share (HU series), else by the slice CNN's P(COVID)."""
    natives = {i: info["native"] for i, info in infos.items() if (info.get("native") or {})}
    if not natives:
        return []
    storage = make_storage(get_settings())
    try:
        blob = storage.get_bytes(native_blob_key(job_id))  # one read for the whole report
    except FileNotFoundError:
        return []
    decoded: dict[int, tuple[Any, NDArray[np.bool_] | None, NDArray[np.uint8] | None]] = {}
    for index, native in natives.items():
        start, length = native["image"]
        pixels = decode_native(blob[start : start + length], native["kind"])
        mask = labels = None
        if native.get("mask"):
            m_start, m_length = native["mask"]
            mask = decode_mask(blob[m_start : m_start + m_length])
        if native.get("lesions"):
            l_start, l_length = native["lesions"]
            labels = decode_label_map(blob[l_start : l_start + l_length])
        decoded[index] = (pixels, mask, labels)
    lesion_shares = {
        i: _lesion_share(labels, mask)
        for i, (_pixels, mask, labels) in decoded.items()
        if labels is not None and mask is not None
    }
    ggo_shares = {
        i: _ggo_share(pixels.pixels, mask, ggo)
        for i, (pixels, mask, _labels) in decoded.items()
        if pixels.kind == "hu" and mask is not None
    }
    shares = lesion_shares or ggo_shares
    if shares:
        ranked = sorted(shares, key=lambda i: (-shares[i], i))
    else:
        ranked = sorted(decoded, key=lambda i: (-scores.get(i, 0.0), i))
    out = []
    for index in ranked[:KEY_IMAGES]:
        pixels, mask, labels = decoded[index]
        facts = {
            "index": index,
            "instance_number": infos[index].get("instance_number"),
            "slice_location": infos[index].get("slice_location"),
            "lesion_share": lesion_shares.get(index),
            "ggo_share": None if lesion_shares else ggo_shares.get(index),
            "p_covid": scores.get(index),
        }
        image = _overlay(pixels, mask, ggo, labels if lesion_shares else None)
        out.append((facts, image))
    return out


def _lesion_share(labels: NDArray[np.uint8], mask: NDArray[np.bool_]) -> float:
    lung = int(mask.sum())
    if lung == 0 or labels.shape != mask.shape:
        return 0.0
    lesion = np.isin(labels, (GGO_LABEL, CONSOLIDATION_LABEL)) & mask
    return float(lesion.sum()) / lung


def _ggo_share(hu: NDArray[Any], mask: NDArray[np.bool_], ggo: tuple[int, int]) -> float:
    lung = int(mask.sum())
    if lung == 0:
        return 0.0
    in_range = (hu >= ggo[0]) & (hu < ggo[1]) & mask
    return float(in_range.sum()) / lung


def _tint(rgb: NDArray[np.float32], where: NDArray[np.bool_], colour: tuple[int, ...]) -> None:
    rgb[where] = 0.55 * rgb[where] + 0.45 * np.asarray(colour, np.float32)


def _overlay(
    native: Any,
    mask: NDArray[np.bool_] | None,
    ggo: tuple[int, int],
    labels: NDArray[np.uint8] | None = None,
) -> Image.Image:
    """Lung window (HU) or the image as sent, the lung outlined; the verdict's lesion masks
    tinted (ground glass orange, consolidation red) or, without them, the ground-glass HU."""
    if native.kind == "hu":
        grey = apply_window(native.pixels, *WINDOWS["lung"])
    else:
        grey = np.asarray(native.pixels, dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if labels is not None and labels.shape == grey.shape:
        _tint(rgb, labels == GGO_LABEL, GGO_RGB)
        _tint(rgb, labels == CONSOLIDATION_LABEL, CONSOLIDATION_RGB)
    elif mask is not None and native.kind == "hu":
        _tint(rgb, (native.pixels >= ggo[0]) & (native.pixels < ggo[1]) & mask, GGO_RGB)
    if mask is not None:
        edges = mask.astype(np.uint8) - cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
        rgb[edges > 0] = LUNG_EDGE_RGB
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


# --- the document --------------------------------------------------------------------------


def _plain(text: Any) -> str:
    return str(text).translate(_PLAIN).encode("latin-1", "replace").decode("latin-1")


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "-"
    return str(value)


class _Report(FPDF):
    def footer(self) -> None:
        self.set_y(-14)
        self.set_font("Helvetica", "I", 7)
        self.multi_cell(0, 3.5, _plain(f"{RESEARCH_USE}  Page {self.page_no()}/{{nb}}"))


def render_report(
    view: dict[str, Any],
    images: list[tuple[dict[str, Any], Image.Image]],
    ggo: tuple[int, int] = GGO_HU_DEFAULT,
) -> bytes:
    """The PDF of a job view (``job_view``) with its key images."""
    result = view["result"] or {}
    series = result.get("series") or {}
    study = view.get("study") or {}
    findings = result.get("findings") or {}
    pdf = _Report(format="A4")
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.add_page()
    pdf.set_title(f"covidct report {view['id']}")

    def heading(text: str) -> None:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 6, _plain(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    def rows(pairs: list[tuple[str, Any]]) -> None:
        for name, value in pairs:
            pdf.set_font("Helvetica", "B", 9)
            pdf.cell(52, 5, _plain(name))
            pdf.set_font("Helvetica", "", 9)
            pdf.multi_cell(0, 5, _plain(_fmt(value)), new_x="LMARGIN", new_y="NEXT")

    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, "covidct: chest CT report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 4.5, _plain(RESEARCH_USE), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows(
        [
            ("Job", view["id"]),
            ("External id", view.get("external_id")),
            ("Created", view["created_at"]),
            ("Report generated", generated),
        ]
    )

    heading("Verdict")
    probabilities = result.get("probabilities") or {}
    category = study.get("category") or "-"
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 7, _plain(f"Category: {category}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    used = f"{result.get('slices_used')} of {result.get('slices_total')}"
    rows(
        [
            ("Label", result.get("label")),
            *((f"P({name})", probabilities[name]) for name in probabilities),
            ("CT pattern (RSNA)", findings.get("pattern")),
            ("Slices used / read", used),
        ]
    )
    for reason in findings.get("pattern_reasons") or []:
        pdf.multi_cell(0, 4.5, _plain(f"- {reason}"), new_x="LMARGIN", new_y="NEXT")
    if series.get("single_slice_note"):
        pdf.set_font("Helvetica", "B", 9)
        pdf.multi_cell(0, 4.5, _plain(series["single_slice_note"]), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    measurements = [
        (name.replace("_", " "), value)
        for name, value in findings.items()
        if name not in ("pattern", "pattern_reasons") and not isinstance(value, dict | list)
    ]
    if measurements:
        heading("Measurements")
        rows(measurements)

    heading("Study and series")
    rows([("Patient id", study.get("patient_id") or series.get("patient_id")),
          ("Accession number", series.get("accession_number")),
          ("Study date", series.get("study_date")),
          ("Study instance UID", series.get("study_instance_uid")),
          ("Series instance UID", series.get("series_instance_uid")),
          ("Series description", series.get("series_description")),
          ("Modality", series.get("modality")),
          ("Slice thickness (mm)", series.get("slice_thickness_mm")),
          ("Instances", series.get("instances")),
          ("Input format", series.get("source_format")),
          ("Why this series", series.get("reason"))])  # fmt: skip
    for other in series.get("candidates") or []:
        if other.get("not_used_because"):
            text = (f"Not used: {other.get('description') or other.get('uid')} "
                    f"({other.get('modality')}, {other.get('slices')} images): "
                    f"{other['not_used_because']}")  # fmt: skip
            pdf.multi_cell(0, 4.5, _plain(text), new_x="LMARGIN", new_y="NEXT")

    heading("Model versions")
    rows(sorted((result.get("model_versions") or {}).items()))

    if images:
        heading("Key images")
        if any(facts.get("lesion_share") is not None for facts, _image in images):
            legend = ("Native slices, lung window (W1500 L-600); lung outlined in cyan, the "
                      "verdict's lesion masks tinted: ground glass orange, consolidation red. "
                      "Chosen by lesion share of the lung.")  # fmt: skip
        else:
            legend = (f"Native slices, lung window (W1500 L-600); lung outlined in cyan, pixels "
                      f"in the ground-glass range ({ggo[0]}..{ggo[1]} HU) that the pattern "
                      "counted tinted orange. Chosen by ground-glass share of the lung (HU "
                      "studies) or by the slice CNN's P(COVID).")  # fmt: skip
        pdf.multi_cell(
            0, 4.5,
            _plain(legend),
            new_x="LMARGIN", new_y="NEXT",
        )  # fmt: skip
        width = (pdf.epw - 8) / KEY_IMAGES
        if pdf.get_y() + width + 16 > pdf.h - 18:
            pdf.add_page()
        top = pdf.get_y() + 1
        for k, (facts, image) in enumerate(images):
            x = pdf.l_margin + k * (width + 4)
            height = width * image.height / image.width
            pdf.image(image, x=x, y=top, w=width, h=height)
            pdf.set_xy(x, top + height + 1)
            caption = (f"slice {facts['index']}, instance {_fmt(facts['instance_number'])}, "
                       f"location {_fmt(facts['slice_location'])}")  # fmt: skip
            if facts.get("lesion_share") is not None:
                caption += f"; lesions {facts['lesion_share']:.0%} of lung"
            elif facts.get("ggo_share") is not None:
                caption += f"; ground glass {facts['ggo_share']:.0%} of lung"
            elif facts.get("p_covid") is not None:
                caption += f"; slice P(COVID) {facts['p_covid']:.2f}"
            pdf.set_font("Helvetica", "", 7)
            pdf.multi_cell(width, 3.5, _plain(caption))
        pdf.set_font("Helvetica", "", 9)
    out = io.BytesIO()
    pdf.output(out)
    return out.getvalue()
