"""Ground truth by construction: synthetic COVID-19 lesions inserted into a normal chest CT.

Issue 16 §4. A lesion is modelled as alveolar filling: each voxel of the lesion moves a
fraction ``alpha`` of the way from its own HU towards soft tissue (+40 HU), so the lung's own
vessels stay visible through ground glass (they are already at tissue density) and the
texture of the underlying lung is kept. ``alpha`` varies inside the lesion with correlated
noise (patchy opacity) and falls off over ~1.5 mm at the border (partial volume).

Kinds (:data:`KINDS`), each a smooth random blob of known volume placed in the lungs of the
source series:

* ``peripheral_ggo``: patchy ground glass (−700…−450 HU) against the pleura;
* ``crazy_paving``: ground glass plus a net of thickened septal lines (~6 mm cells);
* ``subpleural_consolidation``: −100…+60 HU against the chest wall with air bronchograms
  (air-filled branches carved through it);
* ``hilar_ggo``: dense ground glass next to the hilum (central, touching the mediastinal
  surface of the lung: where vessels are largest);
* ``fissure_ggo``: a large patch straddling the oblique fissure (placed at mid height,
  posterior-lateral third of a lung, where the oblique fissure runs; the exact fissure is not
  detected).

Ground truth: the lesion's voxels (``alpha`` ≥ half its peak) inside the source lungs
(:func:`reference_lungs`, the harness's own lung mask, not the segmenter's), with one
label per lesion and a class (1 GGO, 2 consolidation). The volume is then resampled along z to
the target slice thickness with a partial-volume (slab) average of HU and of the label masks
(a voxel is lesion when ≥ half of it is), and a kernel is imitated: ``sharp`` adds
high-frequency noise (SD :data:`SHARP_NOISE_HU`), ``soft`` smooths in-plane. A sparse
protocol keeps one slice in ``every`` (thin slices with gaps: :func:`acquire`).

Write: :func:`write_dicom_series` (CT Image Storage, int16, one file per slice) with the truth
as ``truth.npz`` beside the series folder. Generated data goes under ``cache/`` or ``/tmp``,
never into the repository.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

TISSUE_HU = 40.0
KINDS = (
    "peripheral_ggo",
    "crazy_paving",
    "subpleural_consolidation",
    "hilar_ggo",
    "fissure_ggo",
)
# Peak alpha per kind: lung at ~ -860 HU moves to about the HU in the comment.
PEAK_ALPHA = {
    "peripheral_ggo": 0.30,  # ~ -600
    "crazy_paving": 0.27,  # ~ -620 between the lines, ~ -350 on them
    "subpleural_consolidation": 0.95,  # ~ -10
    "hilar_ggo": 0.38,  # ~ -520
    "fissure_ggo": 0.30,  # ~ -600
}
RADIUS_MM = {  # mean radius of the blob
    "peripheral_ggo": 14.0,
    "crazy_paving": 16.0,
    "subpleural_consolidation": 13.0,
    "hilar_ggo": 12.0,
    "fissure_ggo": 18.0,
}
SHARP_NOISE_HU = 40.0  # extra high-frequency noise of a sharp (lung/bone) kernel
SOFT_SIGMA_MM = 0.6  # in-plane blur of a soft (mediastinal) kernel


@dataclass
class Phantom:
    hu: NDArray[np.int16]  # (Z, Y, X)
    spacing_mm: tuple[float, float, float]
    labels: NDArray[np.uint8]  # 0 none, i+1 lesion i
    classes: NDArray[np.uint8]  # 0 none, 1 GGO, 2 consolidation
    kinds: list[str]  # kind of lesion i
    thickness_mm: float | None = None  # slice thickness where it differs from the spacing


def _smooth_noise(
    shape: tuple[int, ...], sigma_vox: Sequence[float], rng: np.random.Generator
) -> NDArray[np.float32]:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return (field / (field.std() + 1e-6)).astype(np.float32)


def _blob(
    shape: tuple[int, int, int],
    centre: NDArray[np.float64],
    radius_mm: float,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[NDArray[np.float32], tuple[slice, slice, slice]]:
    """A soft irregular blob (0..1) in a box around ``centre`` (voxel coordinates)."""
    half = [int(np.ceil(1.8 * radius_mm / s)) + 2 for s in spacing]
    box = tuple(
        slice(max(0, int(c) - h), min(n, int(c) + h + 1))
        for c, h, n in zip(centre, half, shape, strict=True)
    )
    grids = np.meshgrid(
        *[
            (np.arange(b.start, b.stop) - c) * s
            for b, c, s in zip(box, centre, spacing, strict=True)
        ],
        indexing="ij",
    )
    axes = radius_mm * rng.uniform(0.7, 1.3, 3)
    dist = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, axes, strict=True)))
    sub_shape = dist.shape
    wobble = _smooth_noise(sub_shape, [4.0 / s for s in spacing], rng)
    inside = (dist + 0.25 * wobble < 1.0).astype(np.float32)
    soft = ndimage.gaussian_filter(inside, [0.8 / s for s in spacing])
    return soft.astype(np.float32), (box[0], box[1], box[2])


# The placement's own lung mask (:func:`reference_lungs`), frozen here so that the ground truth
# does not move when the segmenter under test changes its lung mask.
REFERENCE_AIR_HU = -500.0  # aerated lung < -700, soft tissue > -100: the usual midway threshold
REFERENCE_MIN_LUNG_ML = 100.0  # a lung holds > 300 mL; bowel gas and a lone trachea less
REFERENCE_MIN_PIECE_CM2 = 6.0  # per slice: trachea ~2-3 cm2, a main bronchus ~1-2 cm2 ...
REFERENCE_AIRWAY_BAND = 0.12  # ... within 12 % of the body's width of its midline
REFERENCE_HOLE_MAX_CM2 = 3.0  # per slice: a vessel (<= ~2 cm across) is filled, a dome is not


def reference_lungs(
    hu: NDArray[np.int16], spacing: tuple[float, float, float]
) -> NDArray[np.uint8]:
    """Where lesions may be placed (1): the lungs of a normal series, without the segmenter.

    Air below :data:`REFERENCE_AIR_HU` inside the body (per slice not connected to the image
    border), the 3-D components of at least :data:`REFERENCE_MIN_LUNG_ML`; per slice, pieces
    under :data:`REFERENCE_MIN_PIECE_CM2` near the body's midline left out (the trachea and
    main bronchi, whose air joins the lungs' through the bronchi), and holes up to
    :data:`REFERENCE_HOLE_MAX_CM2` filled (vessels; a slice through the diaphragm's dome or
    the heart leaves larger holes, which are not lung). The lesion phantoms' truth is
    clipped to it. Independent of the segmenter on purpose: placed with the segmenter's own
    lung mask, the truth moved whenever the segmenter's lung mask did.
    """
    air = hu < REFERENCE_AIR_HU
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(air, structure=in_plane)
    if count:
        edges = [labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]]
        border = np.unique(np.concatenate([e.ravel() for e in edges]))
        air &= ~np.isin(labels, border[border > 0])
    labels, count = ndimage.label(air)
    out = np.zeros(hu.shape, np.uint8)
    if count == 0:
        return out
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    keep = np.flatnonzero(sizes >= REFERENCE_MIN_LUNG_ML) + 1
    lung = np.isin(labels, keep)
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    column = np.broadcast_to(np.arange(hu.shape[2], dtype=np.float64), hu.shape[1:]).ravel()
    for k in range(hu.shape[0]):
        if not lung[k].any():
            continue
        pieces, n = ndimage.label(lung[k])
        pixels = np.bincount(pieces.ravel(), minlength=n + 1)
        area = pixels * pixel_cm2
        # Central: the piece's mean column within REFERENCE_AIRWAY_BAND of the body's width
        # from the body's middle (the apices' and bases' small tips lie lateral to it).
        cols = np.flatnonzero((hu[k] > REFERENCE_AIR_HU).any(axis=0))
        middle, width = (cols[0] + cols[-1]) / 2.0, float(cols[-1] - cols[0] + 1)
        col_sum = np.bincount(pieces.ravel(), weights=column, minlength=n + 1)
        mean_col = col_sum / np.maximum(pixels, 1)
        central = np.abs(mean_col - middle) <= REFERENCE_AIRWAY_BAND * width
        airway = (area < REFERENCE_MIN_PIECE_CM2) & central
        airway[0] = True
        sl = ~airway[pieces]
        holes, m = ndimage.label(ndimage.binary_fill_holes(sl) & ~sl)
        hole_area = np.bincount(holes.ravel(), minlength=m + 1) * pixel_cm2
        small = hole_area <= REFERENCE_HOLE_MAX_CM2
        small[0] = False
        out[k] = sl | small[holes]
    return out


def _lung_distance(
    lungs: NDArray[np.bool_], spacing: tuple[float, float, float]
) -> NDArray[np.float32]:
    return ndimage.distance_transform_edt(lungs, sampling=spacing).astype(np.float32)


def _pick_centre(
    kind: str,
    lungs: NDArray[np.uint8],
    depth: NDArray[np.float32],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    taken: NDArray[np.bool_],
) -> NDArray[np.float64]:
    """Voxel coordinates of a lesion centre fitting its kind (module docstring)."""
    z, y, x = lungs.shape
    lung_z = np.flatnonzero(lungs.any(axis=(1, 2)))
    z0, z1 = lung_z[0], lung_z[-1]
    zz = np.arange(z)[:, None, None]
    mid = (zz > z0 + 0.25 * (z1 - z0)) & (zz < z0 + 0.8 * (z1 - z0))
    radius = RADIUS_MM[kind]
    if kind in ("peripheral_ggo", "crazy_paving"):
        ok = (depth > 0.4 * radius) & (depth < 0.8 * radius)
    elif kind == "subpleural_consolidation":
        ok = (depth > 0.3 * radius) & (depth < 0.6 * radius)
        ok &= zz < z0 + 0.5 * (z1 - z0)  # lower half
        # Against the chest wall (posterior-lateral), not the heart or the diaphragm.
        rows = np.arange(y)[None, :, None]
        cols = np.arange(x)[None, None, :]
        ys = np.flatnonzero(lungs.any(axis=(0, 2)))
        xs = np.flatnonzero(lungs.any(axis=(0, 1)))
        ok &= rows > ys[0] + 0.55 * (ys[-1] - ys[0])
        ok &= np.abs(cols - (xs[0] + xs[-1]) / 2.0) > 0.25 * (xs[-1] - xs[0])
    elif kind == "hilar_ggo":
        # Central: near the lung's medial surface at mid height, near the lung's middle row.
        cols = np.arange(x)[None, None, :]
        centre_x = x / 2.0
        medial = np.abs(cols - centre_x) < 0.22 * x
        rows = np.arange(y)[None, :, None]
        ys = np.flatnonzero(lungs.any(axis=(0, 2)))
        mid_row = np.abs(rows - (ys[0] + ys[-1]) / 2.0) < 0.15 * (ys[-1] - ys[0])
        ok = medial & mid_row & (depth > 0.3 * radius) & (depth < 0.8 * radius)
    else:  # fissure_ggo: posterior-lateral, mid height, deep enough to hold the patch
        rows = np.arange(y)[None, :, None]
        ys = np.flatnonzero(lungs.any(axis=(0, 2)))
        posterior = rows > ys[0] + 0.5 * (ys[-1] - ys[0])
        ok = posterior & (depth > 0.6 * radius)
    ok &= mid if kind != "subpleural_consolidation" else lungs > 0
    ok &= (lungs > 0) & ~taken
    candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        candidates = np.flatnonzero((lungs > 0) & ~taken & (depth > 0.3 * radius))
    if candidates.size == 0:
        raise ValueError(f"no room for a {kind} lesion in these lungs")
    return np.array(np.unravel_index(rng.choice(candidates), lungs.shape), np.float64)


def insert_lesions(
    hu: NDArray[np.int16],
    lungs: NDArray[np.uint8],
    spacing: tuple[float, float, float],
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
) -> Phantom:
    """The source volume with one lesion of each of ``kinds`` inserted (module docstring)."""
    rng = np.random.default_rng(seed)
    lung = lungs > 0
    depth = _lung_distance(lung, spacing)
    alpha = np.zeros(hu.shape, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    classes = np.zeros(hu.shape, np.uint8)
    air_paths = np.zeros(hu.shape, bool)
    taken = np.zeros(hu.shape, bool)
    for i, kind in enumerate(kinds):
        centre = _pick_centre(kind, lungs, depth, spacing, rng, taken)
        blob, box = _blob(hu.shape, centre, RADIUS_MM[kind], spacing, rng)
        blob *= lung[box]
        texture = 1.0 + 0.15 * _smooth_noise(blob.shape, [2.0 / s for s in spacing], rng)
        a = PEAK_ALPHA[kind] * blob * texture
        if kind == "crazy_paving":
            a = np.maximum(a, blob * _septal_net(blob.shape, spacing, rng) * 0.55)
        if kind == "subpleural_consolidation":
            air_paths[box] |= _bronchogram(blob > 0.5, spacing, rng)
        alpha[box] = np.maximum(alpha[box], a)
        region = (blob >= 0.5) & lung[box]
        labels[box][region] = i + 1
        classes[box][region] = 2 if kind == "subpleural_consolidation" else 1
        # Keep later lesions apart (a margin of one radius).
        grown = ndimage.binary_dilation(
            region, iterations=max(1, int(RADIUS_MM[kind] / spacing[1]))
        )
        taken[box] |= grown
    alpha[air_paths] = 0.0
    out = hu.astype(np.float32)
    out += alpha * (TISSUE_HU - out)
    out += alpha * rng.normal(0, 12.0, out.shape).astype(np.float32)  # fluid adds a little noise
    return Phantom(
        hu=np.clip(np.rint(out), -1024, 3071).astype(np.int16),
        spacing_mm=spacing,
        labels=labels,
        classes=classes,
        kinds=list(kinds),
    )


def _septal_net(
    shape: tuple[int, ...], spacing: tuple[float, float, float], rng: np.random.Generator
) -> NDArray[np.float32]:
    """1 on a 3-D net of thin walls (interlobular septa, ~6 mm cells), 0 elsewhere."""
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    net = np.zeros(shape, bool)
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        phase = sum(g * d for g, d in zip(grids, direction, strict=True)) / 6.0
        net |= np.abs(phase - np.round(phase)) < 0.12  # walls ~1.4 mm thick
    return net.astype(np.float32)


def _bronchogram(
    region: NDArray[np.bool_], spacing: tuple[float, float, float], rng: np.random.Generator
) -> NDArray[np.bool_]:
    """Two or three air-filled branches (radius ~1.5 mm) through the consolidation."""
    out = np.zeros(region.shape, bool)
    pts = np.argwhere(region)
    if len(pts) < 10:
        return out
    centre = pts.mean(axis=0)
    for _ in range(int(rng.integers(2, 4))):
        end = pts[rng.integers(len(pts))].astype(np.float64)
        for t in np.linspace(0, 1, 60):
            p = centre + t * (end - centre)
            out[tuple(np.clip(np.rint(p).astype(int), 0, np.array(region.shape) - 1))] = True
    out = ndimage.binary_dilation(out, structure=_ball_vox(1.5, spacing))
    return out & region


def _ball_vox(radius_mm: float, spacing: tuple[float, float, float]) -> NDArray[np.bool_]:
    r = [max(0, int(radius_mm / s)) for s in spacing]
    g = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1, -r[2] : r[2] + 1]
    return np.asarray(sum((a * s) ** 2 for a, s in zip(g, spacing, strict=True)) <= radius_mm**2)


# --- acquisition ---------------------------------------------------------------------------


def resample_slices(
    volume: NDArray[np.floating] | NDArray[np.integer],
    source_mm: float,
    target_mm: float,
) -> NDArray[np.float32]:
    """Slab-average along z: slice j covers [j*t, (j+1)*t) of the source's [i*s, (i+1)*s)."""
    n = volume.shape[0]
    extent = n * source_mm
    m = max(1, int(extent // target_mm))
    out = np.zeros((m, *volume.shape[1:]), np.float32)
    for j in range(m):
        a, b = j * target_mm, (j + 1) * target_mm
        i0, i1 = int(a // source_mm), min(n - 1, int(np.ceil(b / source_mm)) - 1)
        total = 0.0
        for i in range(i0, i1 + 1):
            w = min(b, (i + 1) * source_mm) - max(a, i * source_mm)
            if w > 0:
                out[j] += w * volume[i].astype(np.float32)
                total += w
        out[j] /= max(total, 1e-6)
    return out


def apply_kernel(
    hu: NDArray[np.float32], spacing: tuple[float, float, float], kernel: str, seed: int = 0
) -> NDArray[np.float32]:
    """``sharp``: + high-frequency noise; ``soft``: in-plane Gaussian blur; ``none``: as is."""
    if kernel == "none":
        return hu
    if kernel == "soft":
        return ndimage.gaussian_filter(
            hu, [0, SOFT_SIGMA_MM / spacing[1], SOFT_SIGMA_MM / spacing[2]]
        )
    if kernel == "sharp":
        rng = np.random.default_rng(seed)
        white = rng.standard_normal(hu.shape).astype(np.float32)
        high = white - ndimage.gaussian_filter(white, [0, 1.0, 1.0])
        high /= high.std() + 1e-6
        return hu + SHARP_NOISE_HU * high
    raise ValueError(f"unknown kernel {kernel!r}")


def acquire(
    phantom: Phantom, slice_mm: float, kernel: str, seed: int = 0, every: int = 1
) -> Phantom:
    """The phantom seen at ``slice_mm`` slices through ``kernel`` (truth resampled the same way).

    ``every`` > 1 keeps one slice in ``every``: a sparse protocol (thin slices with gaps, as a
    series thinned for transfer or the demo's every third 2 mm slice), slices ``slice_mm``
    thick and ``every * slice_mm`` apart; the truth is the same slices' labels.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    src = phantom.spacing_mm[0]
    hu = resample_slices(phantom.hu, src, slice_mm)
    spacing = (float(slice_mm), phantom.spacing_mm[1], phantom.spacing_mm[2])
    hu = apply_kernel(hu, spacing, kernel, seed)
    labels = np.zeros(hu.shape, np.uint8)
    best = np.zeros(hu.shape, np.float32)
    for i in range(1, len(phantom.kinds) + 1):
        frac = resample_slices((phantom.labels == i).astype(np.float32), src, slice_mm)
        win = (frac >= 0.5) & (frac > best)
        labels[win] = i
        best = np.maximum(best, frac)
    cls = np.zeros(hu.shape, np.uint8)
    for i, kind in enumerate(phantom.kinds, start=1):
        cls[labels == i] = 2 if kind == "subpleural_consolidation" else 1
    return Phantom(
        hu=np.clip(np.rint(hu[::every]), -1024, 3071).astype(np.int16),
        spacing_mm=(spacing[0] * every, spacing[1], spacing[2]),
        labels=np.ascontiguousarray(labels[::every]),
        classes=np.ascontiguousarray(cls[::every]),
        kinds=phantom.kinds,
        thickness_mm=float(slice_mm),
    )


# --- DICOM ---------------------------------------------------------------------------------


def write_dicom_series(phantom: Phantom, folder: Path, description: str = "lesion phantom") -> Path:
    """One CT Image Storage file per slice (int16, slope 1, intercept 0) + ``truth.npz`` beside.

    Slice 0 is inferior; ImagePositionPatient z and SliceLocation grow with the index.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    dz, dy, dx = phantom.spacing_mm
    z_count, rows, cols = phantom.hu.shape
    today = dt.date.today().strftime("%Y%m%d")
    for k in range(z_count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.SeriesDescription = description
        ds.StudyDate = today
        ds.PatientID = "PHANTOM"
        ds.PatientName = "Phantom^Lesion"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        z = -300.0 + k * dz
        ds.ImagePositionPatient = [-cols * dx / 2.0, -rows * dy / 2.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.SliceThickness = phantom.thickness_mm or dz
        ds.PixelSpacing = [dy, dx]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.PixelData = np.ascontiguousarray(phantom.hu[k]).astype("<i2").tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    np.savez_compressed(
        folder.parent / f"{folder.name}_truth.npz",
        labels=phantom.labels,
        classes=phantom.classes,
        kinds=np.array(phantom.kinds),
        spacing_mm=np.array(phantom.spacing_mm),
    )
    return folder
