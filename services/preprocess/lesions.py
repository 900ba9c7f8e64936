"""Ground-glass and consolidation as 3-D regions of an HU volume, with normal structures removed.

Input: ``Study.hu`` ((Z, Y, X) int16 HU, slices in anatomical order) and its spacing in mm.
Output: :class:`LesionMasks` (GGO, consolidation, and the two lungs with the lesions inside
them), all at the input's resolution. Lesion = ``ggo | consolidation``.

Why not a global HU range (``lung_features``): in a normal lung the vessels, bronchial walls,
fissures and the partial-volume rims of all three fall in the −700…+100 HU ranges and read as
0.5–10 % "opacity". Here they are removed as *structures*:

1. **Working grid.** The volume is cropped to the body and block-averaged in-plane (and
   along z for sub-millimetre slices) to ~``work_mm``: the partial-volume average costs nothing
   in accuracy for regions of millilitres and makes the 3-D filters affordable (§7 of issue 16:
   the step must add ≤ 5 s on 2 cores).
2. **Lungs.** Air below ``air_hu`` inside the body (not connected to the outside air in the
   slice), the 3-D components bigger than ``min_lung_ml``; the two lungs are separated by
   erosion when they touch (anterior junction) and labelled by side. Vessels, airways and
   enclosed lesions are put back by filling holes per slice and a small 3-D closing; dense
   lesions against the chest wall (which the air threshold leaves out) are put back per slice
   from the pockets between each lung and its convex hull that have lesion density and open
   onto the chest wall (:func:`services.preprocess.lung_features.include_pleural_lesions`;
   in the lower ``dome_pocket_levels`` of the lungs also without the tissue standing on the
   diaphragm, so a consolidation lying on the liver's dome is a pocket of its own);
   ground glass against the mediastinum or the diaphragm is put back in 3-D: regions of GGO
   density thicker than 2 x ``hazy_border_mm`` that touch a lung.
3. **Candidates.** Voxels of the lungs whose smoothed HU lies in the GGO
   (``ggo_hu``) or consolidation (``consolidation_hu``) range.
4. **Tubes** (vessels, bronchial walls seen as bright cylinders), looked for outside the
   opacities thick enough to be nothing else (consolidation thicker than 2 x ``thick_mm``,
   counted with the chest wall or diaphragm it lies against, ground glass thicker than
   2 x ``opaque_mm``): multiscale Hessian of the
   smoothed volume; a voxel whose two largest eigenvalues are strongly negative and whose
   smallest is small next to them (Frangi's Rb) at any scale in ``tube_sigmas_mm`` and is
   dense (≥ ``tube_min_hu``) is a tube; the tube grown by ``rim_mm`` within candidate density
   is its partial-volume rim. Both are removed.
5. **Thin structures** (fissures, small vessels, airway walls, the partial-volume shell along
   the pleura and the mediastinum): morphological opening of what is left with an ellipsoid
   of radius ``open_mm`` in-plane and ``open_z_mm`` along z (with the voxel spacing): anything
   thinner than 2 × ``open_mm`` in-plane cannot hold it and vanishes.
   On slices ``line_min_slice_mm`` or thicker, vessels running in the slice plane are thin
   bright lines too short along z for the 3-D test: an in-plane (2-D) ridge test removes them.
6. **Components** smaller than ``min_lesion_ml`` are dropped (noise, residual vessel stubs).
   **Mediastinum and hilum**: per slice the gaps of the two lungs' convex hull that touch both
   lungs are the mediastinum (with the hilar vessels outside the lung mask). Lung within
   ``shell_mm`` of it (its partial-volume shell) seeds no lesion; in the hilar levels a seed
   within ``hilum_mm`` of it is kept only if its component extends peripherally (holds at
   least ``hilum_extension_ml`` beyond ``hilum_mm``, summed over its pieces): the hilar
   vessels fan out there, thick and branching, with no clean tube for the Hessian.
   **Caps**: a seed no thicker than ``cap_mm`` (or one slice) with non-lung tissue directly
   below or above most of it is the partial volume of a curved surface cut by the slice (the
   diaphragm's dome, the heart, a hilar vessel), not an opacity.
7. **Holes put back**: vessels and septa running *through* an opacity belong to it (a
   radiologist's mask includes them): voxels removed in steps 4–5 within ``grow_mm`` of a
   lesion seed, in the opacity ranges down to ``pv_margin_hu`` below the GGO range (the
   partial-volume border), are lesion again, with the class of the nearest seed. A
   ground-glass seed grows only down to its half-maximum surface: half-way between its
   median HU and the aerated lung around it (``half_max_growth``; a denser GGO's border
   lies higher than a faint one's).

Class: GGO where the smoothed HU is below ``consolidation_hu[0]``, consolidation otherwise.
The masks are brought back to the input grid by repeating the working voxels.

Every constant lives in ``models/lesion-seg/v1/config.json`` (loaded by :func:`default_config`;
the dataclass defaults equal the file, a unit test checks it) and was set on phantoms with
known lesions (``services.training.lesion_phantoms``), not on the real series.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.preprocess.lung_features import include_pleural_lesions

CONFIG_PATH = Path(__file__).resolve().parents[2] / "models" / "lesion-seg" / "v1" / "config.json"


@dataclass(frozen=True)
class LesionConfig:
    """Thresholds and sizes of :func:`segment_lesions` (mm, HU, mL); why each value."""

    # Working grid: ~1.25 mm keeps 2.5 mm-thick structures two voxels wide and makes the
    # Hessian ~4x cheaper than at the usual 0.6-0.7 mm pixels.
    work_mm: float = 1.25
    # Lung air: aerated lung is -950..-700 HU, soft tissue > -100; -500 is midway and the
    # usual threshold for lung segmentation.
    air_hu: float = -500.0
    # A lung holds > 300 mL even in a child or at the apex/base of a partial scan; the trachea
    # and main bronchi (~ 30-60 mL) and bowel gas are smaller.
    min_lung_ml: float = 100.0
    # 3-D closing that puts the vessel stubs and the hilar partial volume back into the lung.
    lung_close_mm: float = 3.0
    # A hole of the lung mask with no air below it for this depth stands on the diaphragm
    # (liver dome), it is not an enclosed lesion; a lesion has aerated lung below within ~3 cm.
    grounded_mm: float = 40.0
    # Smoothing before classifying density: the noise of a sharp kernel (SD 50-100 HU)
    # otherwise scatters GGO voxels across the range limits.
    smooth_mm: float = 1.0
    # Ground glass -700..-300 HU (Colombi 2020 / Lanza 2020 poorly aerated lung); normal
    # dependent lung reaches -750, so a lower bound there fills the lung bases with "GGO".
    ggo_hu: tuple[float, float] = (-700.0, -300.0)
    # Consolidation (non-aerated) -300..+100 HU; above +100 is calcification / contrast.
    consolidation_hu: tuple[float, float] = (-300.0, 100.0)
    # Hessian scales (Gaussian sigma): a cylinder of radius R answers best at sigma ~ R/sqrt(3);
    # these cover vessels of radius ~2-8 mm (thinner ones are removed by the opening).
    tube_sigmas_mm: tuple[float, ...] = (1.5, 3.0, 4.5)
    # Tube: |lambda1| <= tube_rb * sqrt(|lambda2 lambda3|) (Frangi's Rb; 0 for an ideal tube,
    # 1 for a blob) ...
    tube_rb: float = 0.5
    # ... and scale-normalised |lambda2| * sigma^2 above this (HU): a vessel against lung gives
    # ~150-250, against ground glass ~100; noise and texture < 30.
    tube_strength_hu: float = 50.0
    # Tubes are looked for among all candidate voxels: small vessels read as ground glass
    # (-600..-400) once averaged into 1.25 mm voxels.
    tube_min_hu: float = -700.0
    # ... whose surroundings (Gaussian mean over background_mm) are aerated: a vessel of radius
    # 2-5 mm in lung or GGO reads < -450; a voxel inside consolidation or against the chest
    # wall reads > -300.
    background_mm: float = 5.0
    tube_background_hu: float = -350.0
    # Partial-volume rim of a tube: one working voxel around it.
    rim_mm: float = 1.5
    # Opening radius: fissures (< 1 mm), airway walls (1-2 mm), small vessels and pleural
    # partial volume are thinner than 2 x 2 mm; a lesion of interest is thicker.
    open_mm: float = 2.0
    # ... reaching only this far along z (an ellipsoid; a disc on slices >= 2 x this): on
    # thin slices a 3-D 2 mm ball also cut the lesions' thin parts along z (1 mm phantoms:
    # crazy paving -19 %, subpleural -19 %, the hilar GGO's peripheral part lost, so the hilum
    # rule dropped it). Anything thinner than 2 x open_mm in-plane is still removed.
    open_z_mm: float = 1.0
    # Smallest lesion seed kept: 0.5 mL is a 10 mm sphere; smaller specks are vessel stubs,
    # partial volume of thick slices and noise (on the phantoms 0.1 mL left 0.3-0.7 % of the
    # lung as false positives at 2.5-5 mm; 1.0 mL lost the hilar GGO to the hilum rule).
    min_lesion_ml: float = 0.5
    # Growth of each opacity over what was removed inside it (a vessel of radius 1.5 mm plus
    # its 1.5 mm rim) and out to its partial-volume border.
    grow_mm: float = 3.0
    # Growth reaches this far below the GGO range: a faint GGO at -600 HU in lung at -860 has
    # its half-way (volume-defining) surface at -730.
    # Tuned on the phantoms (60 -> 30): the volume-defining half-maximum surface of a GGO of
    # -600 in lung of -860 lies at -730; -760 over-measured GGO by 5-18 %.
    pv_margin_hu: float = 30.0
    # Consolidation thicker than 2 x 4 mm is kept whole (no tube search inside): only the
    # lobar/hilar vessels are that thick, and they sit at the hilum, outside the lung mask.
    thick_mm: float = 4.0
    # Dense voxels within this distance of such a thick consolidation belong to it (tuned on
    # the phantoms: the subpleural consolidation lost its edges to the tube test, -12..-20 %).
    dense_grow_mm: float = 10.0
    # Mediastinal shell: lung within this in-plane distance of the mediastinum is the partial
    # volume of the mediastinal pleura, the heart and the great vessels; no lesion starts there
    # (a lesion reaching it from the lung is grown back into it).
    shell_mm: float = 2.5
    # Hilum: the hilar vessels and bronchi fan out of the mediastinum over the first 1-2 cm,
    # thick and branching (no clean tube for the Hessian). An opacity whose seed lies within
    # hilum_mm of the mediastinum, in the hilar levels, is a lesion only if it extends
    # peripherally: its part beyond hilum_mm holds at least hilum_extension_ml (not re-opened:
    # the outer part of a hilar GGO is thin, and with the opening the 1 mm soft phantom lost it).
    hilum_mm: float = 10.0
    # ... "extends peripherally": its voxels beyond hilum_mm hold at least this much in all
    # (summed over the pieces the cut-off makes; v1.2 asked it of one piece and lost the 1 mm
    # phantoms' hilar GGO). 0.1 mL brought back hilar false positives in v1.2: normal001
    # 0.10 -> 0.19 %, P002 mid-band slice AUC 0.892 -> 0.845.
    hilum_extension_ml: float = 0.5
    # Hilar levels: the hilum sits at mid height of the lungs (T5-T7); fractions of the lungs'
    # z extent from the base. Outside them (apex, bases) lesions against the mediastinum
    # (e.g. posterior basal, paravertebral) are common and kept.
    hilum_levels: tuple[float, float] = (0.3, 0.9)
    # Thick slices (>= line_min_slice_mm): a vessel running in the slice plane is a thin bright
    # line in 2-D, too short along z for the 3-D tube test; removed by an in-plane ridge test
    # (2-D Hessian at line_sigma_mm: |l1| <= tube_rb * |l2|, l2 * sigma^2 <= -line_strength_hu,
    # as the tubes' strength) ...
    line_min_slice_mm: float = 3.0
    line_sigma_mm: float = 1.5
    line_strength_hu: float = 50.0
    # ... in aerated lung only: in-plane mean over background_mm below this. A ridge inside
    # ground glass (-700..-450 around it) is the lesion's own texture or a vessel the growth
    # step would give back to it; removing it there cost the 6 mm demo study its right-lung GGO.
    line_background_hu: float = -700.0
    # Caps (a thick slice through the top of the diaphragm's dome, the heart's or a hilar
    # vessel's curved surface): a seed no thicker than cap_mm (or one slice) along z with
    # non-lung tissue directly below or above >= cap_support of its voxels is that surface's
    # partial volume, not a lesion (5 mm phantoms: a 3 mL "GGO" patch over the liver dome and
    # 1-2 mL ones against the heart; FP 0.31 -> 0.16 % of the lung, Dice 0.775 -> 0.807).
    cap_mm: float = 4.0
    cap_support: float = 0.8
    # Growth floor per ground-glass component at its half-maximum surface, half-way between
    # its median HU and the aerated lung around it (Gaussian mean over half_max_bg_mm of the
    # lung below the GGO range, farther than half_max_gap_mm from any seed: the opacity's own
    # blurred border would pull it up), never below ggo_hu[0] - pv_margin_hu. The fixed floor
    # over-measured dense GGO (hilar, fissure: +10..+22 % on phantom seeds 1-2). Phantom seeds
    # 0-6: Dice higher on all 42 acquisitions (mean 0.774 -> 0.783), volume no better overall
    # (143 -> 140 of 210 within 15 %): fissure and peripheral GGO better, crazy paving and
    # hilar GGO with vessels inside (both raise the median) measured lower (MODEL_CARD v1.4).
    half_max_growth: bool = True
    half_max_bg_mm: float = 10.0
    half_max_gap_mm: float = 5.0
    # Hazy regions: ground-glass density (ggo_hu) that holds a ball of this radius (the
    # consolidation's thick_mm) is an opacity whatever runs through it: no tube or rim is
    # looked for there. Normal lung has aerated lung within a few mm of every vessel; crazy
    # paving's septa and the vessels inside a GGO passed the tube test and took the GGO
    # between them as rims (phantoms: crazy paving -7..-71 %). Regions denser than GGO
    # (hilar vessels with their halo) are excluded: with them normal001 rose 0.105 -> 0.36 %.
    # With hazy_border_mm, phantom seeds 0-6: within 15 % 140 -> 176 of 210, Dice mean
    # 0.783 -> 0.823, ground glass now +4..+7 % high on average (MODEL_CARD v1.5).
    opaque_mm: float = 4.0
    # Lung mask: a region in the GGO range that holds a ball of this radius and touches a
    # lung is that lung, though denser than air_hu (ground glass against the mediastinum or
    # the diaphragm, neither enclosed by lung nor facing the chest wall; seed 5's crazy
    # paving lost half its volume so). Soft tissue is denser and a pleural partial-volume
    # shell thinner; normal001's lung volume and opacity did not change.
    hazy_border_mm: float = 4.0
    # Thickness of a consolidation (thick_mm) measured together with the dense tissue it lies
    # against (chest wall, diaphragm; the mediastinum only outside the hilar zone, hilum_mm
    # in the hilar levels): the lung mask leaves out the part of a subpleural consolidation
    # that bulges beyond its slice's hull, the part left inside can be thinner than
    # 2 x thick_mm, and its curved edges then passed the tube test (phantom seed 3, 1 mm: a
    # 3.9 mL consolidation lost whole). Without the hilar exclusion the hilar vessels were
    # kept too (Dice -0.001..-0.007 on 6 of 7 seeds, FP up to +0.04 % of lung, normal001
    # 0.105 -> 0.131 %). Phantom seeds 0-6: MODEL_CARD v1.6.
    thick_counts_chest_wall: bool = True
    # In the lower dome_pocket_levels of the lungs' height (where the liver's dome can stand
    # inside a lung's hull; 0 = off), a pleural pocket is also looked for without the tissue
    # standing on the diaphragm (grounded_mm): a consolidation lying on the dome otherwise
    # joins the dome's pocket and is left out of the lung mask with it. Higher up the
    # mediastinum stands on the heart: without it, pieces beside the trachea became pockets
    # (cap002, P002 apex).
    dome_pocket_levels: float = 0.5

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LesionConfig:
        """A config from a dict (e.g. config.json); unknown keys are an error, lists → tuples."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown lesion config keys: {sorted(unknown)}")
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }


@lru_cache(maxsize=1)
def default_config() -> LesionConfig:
    """The shipped config (``models/lesion-seg/v1/config.json``); dataclass defaults if absent."""
    if not CONFIG_PATH.is_file():
        return LesionConfig()
    data = json.loads(CONFIG_PATH.read_text())
    return LesionConfig.from_mapping(data.get("lesion_config", {}))


@dataclass(frozen=True)
class LesionMasks:
    ggo: NDArray[np.bool_]  # (Z, Y, X) ground-glass opacity voxels
    consolidation: NDArray[np.bool_]  # (Z, Y, X) consolidation voxels; disjoint from ggo
    # (Z, Y, X) 0 outside, 1 patient's right lung, 2 patient's left lung (lesions included)
    lungs: NDArray[np.uint8]
    spacing_mm: tuple[float, float, float]  # (slice, row, column), as Study.spacing_mm

    @property
    def lesion(self) -> NDArray[np.bool_]:
        return np.asarray(self.ggo | self.consolidation)


def segment_lesions(
    hu: NDArray[np.int16],
    spacing_mm: tuple[float, float, float],
    *,
    patient_left_on_image_right: bool = True,
    config: LesionConfig | None = None,
) -> LesionMasks:
    """GGO, consolidation and lungs of an HU volume (module docstring for the method)."""
    cfg = config or default_config()
    if hu.ndim != 3:
        raise ValueError(f"hu must be (Z, Y, X), got {hu.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_mm must be three positive numbers, got {spacing_mm}")
    shape = hu.shape
    empty = LesionMasks(
        ggo=np.zeros(shape, bool),
        consolidation=np.zeros(shape, bool),
        lungs=np.zeros(shape, np.uint8),
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
    )
    factors = (
        max(1, round(cfg.work_mm / spacing[0])) if spacing[0] < 0.75 * cfg.work_mm else 1,
        max(1, round(cfg.work_mm / spacing[1])),
        max(1, round(cfg.work_mm / spacing[2])),
    )
    box = _body_box(hu, cfg)
    if box is None:
        return empty
    crop = hu[box]
    work, pad = _block_mean(crop, factors)
    wspacing = (spacing[0] * factors[0], spacing[1] * factors[1], spacing[2] * factors[2])

    lungs_w = _lungs(work, wspacing, patient_left_on_image_right, cfg)
    if not lungs_w.any():
        return empty
    ggo_w, cons_w = _lesions(work, lungs_w, wspacing, cfg)

    def back(mask: NDArray[Any]) -> NDArray[Any]:
        up = mask
        for axis, f in enumerate(factors):
            if f > 1:
                up = np.repeat(up, f, axis=axis)
        up = up[: up.shape[0] - pad[0], : up.shape[1] - pad[1], : up.shape[2] - pad[2]]
        out = np.zeros(shape, mask.dtype)
        out[box] = up
        return out

    return LesionMasks(
        ggo=back(ggo_w),
        consolidation=back(cons_w),
        lungs=back(lungs_w),
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
    )


# --- working grid ---------------------------------------------------------------------------


def _body_box(hu: NDArray[np.int16], cfg: LesionConfig) -> tuple[slice, slice, slice] | None:
    """Bounding box of everything denser than air (the body), all slices."""
    dense = hu > cfg.air_hu
    rows = np.flatnonzero(dense.any(axis=(0, 2)))
    cols = np.flatnonzero(dense.any(axis=(0, 1)))
    if rows.size == 0 or cols.size == 0:
        return None
    return (slice(0, hu.shape[0]), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))


def _block_mean(
    hu: NDArray[np.int16], factors: tuple[int, int, int]
) -> tuple[NDArray[np.float32], tuple[int, int, int]]:
    """Average over blocks of ``factors`` voxels (edge-padded); returns the padding too."""
    pad = tuple((-n) % f for n, f in zip(hu.shape, factors, strict=True))
    vol = hu
    if any(pad):
        vol = np.pad(vol, [(0, p) for p in pad], mode="edge")
    fz, fy, fx = factors
    z, y, x = vol.shape
    out = np.empty((z, y // fy, x // fx), np.float32)
    for k in range(z):  # cv2's area resampling is the block mean for integer factors, fast
        out[k] = cv2.resize(
            vol[k].astype(np.float32), (x // fx, y // fy), interpolation=cv2.INTER_AREA
        )
    if fz > 1:
        out = out.reshape(z // fz, fz, y // fy, x // fx).mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(out, dtype=np.float32), (pad[0], pad[1], pad[2])


def _bbox(mask: NDArray[np.bool_]) -> tuple[slice, slice, slice]:
    """Bounding box of a non-empty mask."""
    ranges = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        ranges.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return (ranges[0], ranges[1], ranges[2])


def _ball(
    radius_mm: float, spacing: tuple[float, float, float], z_radius_mm: float | None = None
) -> NDArray[np.bool_]:
    """A ball of ``radius_mm`` (an ellipsoid with ``z_radius_mm`` along z when given)."""
    radii = (radius_mm if z_radius_mm is None else z_radius_mm, radius_mm, radius_mm)
    r = [max(0, int(np.floor(a / s))) for a, s in zip(radii, spacing, strict=True)]
    grids = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1, -r[2] : r[2] + 1]
    # An axis of radius 0 is one voxel thick (a disc): it adds nothing to the distance.
    axes = zip(grids, spacing, radii, strict=True)
    dist2 = sum((g * s / a) ** 2 if a > 0 else 0.0 * g for g, s, a in axes)
    return np.asarray(dist2 <= 1.0 + 1e-6)


# --- lungs ----------------------------------------------------------------------------------


def _lungs(
    work: NDArray[np.float32],
    spacing: tuple[float, float, float],
    left_on_image_right: bool,
    cfg: LesionConfig,
) -> NDArray[np.uint8]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    air = work < cfg.air_hu
    # Outside air: per slice, the air connected to the image border.
    outside = np.zeros_like(air)
    s2 = np.zeros((3, 3, 3), bool)
    s2[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(air, structure=s2)
    if count:
        border = np.unique(
            np.concatenate(
                [
                    labels[:, 0, :].ravel(),
                    labels[:, -1, :].ravel(),
                    labels[:, :, 0].ravel(),
                    labels[:, :, -1].ravel(),
                ]
            )
        )
        outside = np.isin(labels, border[border > 0])
    inner = air & ~outside
    labels, count = ndimage.label(inner)
    if count == 0:
        return np.zeros(work.shape, np.uint8)
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    big = np.flatnonzero(sizes >= cfg.min_lung_ml) + 1
    if big.size == 0:
        return np.zeros(work.shape, np.uint8)
    big = big[np.argsort(sizes[big - 1])[::-1]][:2]
    lung = np.isin(labels, big)

    side_img = _split_sides(lung, labels, big, spacing)  # 1 image-left, 2 image-right
    # Put vessels, airways and enclosed lesions back: small 3-D closing, then holes per slice.
    out = np.zeros(work.shape, np.uint8)
    for value in (1, 2):
        part = side_img == value
        if not part.any():
            continue
        box = _bbox(part)
        closed = _close(part[box], cfg.lung_close_mm, spacing)
        grounded = _grounded(work[box], cfg.air_hu, spacing[0], cfg.grounded_mm)
        for k in range(closed.shape[0]):
            if closed[k].any():
                closed[k] |= _holes_to_fill(closed[k], grounded[k])
        target = out[box]
        target[closed & (target == 0)] = value
    # Dense lesions against the chest wall, per slice (pockets of the convex hull).
    lung_z = np.flatnonzero(out.any(axis=(1, 2)))
    dome_top = -1.0
    if lung_z.size and cfg.dome_pocket_levels > 0:
        dome_top = lung_z[0] + cfg.dome_pocket_levels * (lung_z[-1] - lung_z[0])
        on_diaphragm = _grounded(work, cfg.air_hu, spacing[0], cfg.grounded_mm)
    for k in range(work.shape[0]):
        sl = out[k]
        if not sl.any():
            continue
        side = _side_by_columns(sl)
        refined = include_pleural_lesions(work[k], sl > 0, side)
        if k < dome_top and on_diaphragm[k].any():
            # The liver's dome inside a lung's hull makes one pocket with a consolidation
            # lying on it, too large and not facing the chest wall; without the tissue that
            # stands on the diaphragm the consolidation is a pocket of its own.
            lifted = np.where(on_diaphragm[k], np.float32(1000.0), work[k])
            refined |= include_pleural_lesions(lifted, sl > 0, side)
        added = refined & (sl == 0)
        if added.any():
            sl[added] = np.where(side[added] == 1, 2, 1).astype(np.uint8)
    if cfg.hazy_border_mm > 0:
        _add_hazy_borders(work, out, spacing, cfg)
    # Image side → patient side: patient's right lung is on the image's left in the usual view.
    right_value, left_value = (1, 2) if left_on_image_right else (2, 1)
    result = np.zeros_like(out)
    result[out == right_value] = 1
    result[out == left_value] = 2
    return result


def _add_hazy_borders(
    work: NDArray[np.float32],
    lungs: NDArray[np.uint8],
    spacing: tuple[float, float, float],
    cfg: LesionConfig,
) -> None:
    """Ground glass against the mediastinum or the diaphragm, left out by the air threshold.

    Voxels above ``air_hu`` are not lung unless enclosed by it (per slice) or in a pocket
    facing the chest wall; the denser half of a ground-glass opacity lying against the
    mediastinum is neither. Soft tissue is above the GGO range and the partial-volume shell
    of a lung surface is thin: a region in the GGO range that holds a ball of
    ``hazy_border_mm`` and touches a lung is that lung (labelled in place).
    """
    lung = lungs > 0
    # The lungs' box and one ball diameter around it: a border region may reach beyond it.
    margin = [int(np.ceil(2 * cfg.hazy_border_mm / s)) + 1 for s in spacing]
    box = tuple(
        slice(max(0, b.start - m), min(n, b.stop + m))
        for b, m, n in zip(_bbox(lung), margin, work.shape, strict=True)
    )
    vol = ndimage.gaussian_filter(work[box], [cfg.smooth_mm / s for s in spacing], truncate=2.5)
    inner = lung[box]
    hazy = ~inner & (vol >= cfg.ggo_hu[0]) & (vol < cfg.consolidation_hu[0])
    hazy = _open(hazy, cfg.hazy_border_mm, spacing)
    if not hazy.any():
        return
    labels, _count = ndimage.label(hazy)
    touching = np.unique(labels[ndimage.binary_dilation(inner) & hazy])
    add = np.isin(labels, touching[touching > 0])
    if not add.any():
        return
    sub = lungs[box]
    _, idx = ndimage.distance_transform_edt(sub == 0, sampling=spacing, return_indices=True)
    nearest = sub[idx[0], idx[1], idx[2]]
    sub[add] = nearest[add]


def _grounded(
    work: NDArray[np.float32], air_hu: float, slice_mm: float, depth_mm: float
) -> NDArray[np.bool_]:
    """Voxels with no air straight below them (towards slice 0, inferior) for ``depth_mm``.

    The top of the diaphragm dome cut by an axial slice is a round patch of liver enclosed by
    lung in that slice; in 3-D it stands on the liver. Lesions enclosed by lung have aerated
    lung below them within a few cm.
    """
    dense = work >= air_hu
    if work.shape[0] < 3:  # a slab (or one slice) has no "below" to stand on
        return np.zeros(work.shape, bool)
    run = np.zeros(work.shape, np.int32)
    run[0] = dense[0]
    for k in range(1, work.shape[0]):
        run[k] = np.where(dense[k], run[k - 1] + 1, 0)
    reaches_bottom = run == (np.arange(work.shape[0]) + 1)[:, None, None]
    return np.asarray((run * slice_mm >= depth_mm) | (dense & reaches_bottom))


def _holes_to_fill(sl: NDArray[np.bool_], grounded: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Holes of one slice's lung mask, except those standing on the diaphragm (mostly grounded)."""
    holes = ndimage.binary_fill_holes(sl) & ~sl
    if not holes.any():
        return np.asarray(holes)
    labels, count = ndimage.label(holes)
    area = np.bincount(labels.ravel(), minlength=count + 1)
    on_ground = np.bincount(labels.ravel(), weights=grounded.ravel(), minlength=count + 1)
    keep = on_ground <= 0.5 * area
    keep[0] = False
    return np.asarray(keep[labels])


def _side_by_columns(sl: NDArray[np.uint8]) -> NDArray[np.int64]:
    """0 for pixels on the image-left lung's side of the gap between the lungs, else 1."""
    left_cols = np.flatnonzero((sl == 1).any(axis=0))
    right_cols = np.flatnonzero((sl == 2).any(axis=0))
    if right_cols.size == 0:
        return np.zeros(sl.shape, np.int64)
    if left_cols.size == 0:
        return np.ones(sl.shape, np.int64)
    split = (np.median(left_cols) + np.median(right_cols)) / 2.0
    return np.broadcast_to((np.arange(sl.shape[1]) >= split).astype(np.int64), sl.shape)


def _split_sides(
    lung: NDArray[np.bool_],
    labels: NDArray[np.int32],
    big: NDArray[np.intp],
    spacing: tuple[float, float, float],
) -> NDArray[np.uint8]:
    """Label 1 the lung on the image's left, 2 the one on the image's right."""
    out = np.zeros(lung.shape, np.uint8)
    parts = [labels == big[0], labels == big[1]] if big.size == 2 else _split_fused(lung, spacing)
    if len(parts) == 1:
        # One lung only (or could not split): side by the body midline.
        cols = np.flatnonzero(lung.any(axis=(0, 1)))
        centre = lung.shape[2] / 2.0
        out[lung] = 1 if cols.mean() < centre else 2
        return out
    cx = [np.nonzero(p)[2].mean() for p in parts]
    first, second = (parts[0], parts[1]) if cx[0] <= cx[1] else (parts[1], parts[0])
    out[first] = 1
    out[second] = 2
    return out


def _split_fused(
    lung: NDArray[np.bool_], spacing: tuple[float, float, float]
) -> list[NDArray[np.bool_]]:
    """Two lungs touching at the anterior/posterior junction: erode until they come apart.

    Done on a 2x coarser grid (the junction is a few mm thick; cost / 8); each voxel then goes
    to the nearer of the two eroded cores.
    """
    coarse = lung[::2, ::2, ::2]
    cspacing = (spacing[0] * 2, spacing[1] * 2, spacing[2] * 2)
    eroded = coarse
    structure = ndimage.generate_binary_structure(3, 1)
    for _ in range(6):
        eroded = ndimage.binary_erosion(eroded, structure=structure)
        labels, count = ndimage.label(eroded)
        if count >= 2:
            sizes = np.bincount(labels.ravel())[1:]
            order = np.argsort(sizes)[::-1]
            if sizes[order[1]] >= 0.1 * sizes[order[0]]:
                seeds = np.zeros(coarse.shape, np.uint8)
                seeds[labels == order[0] + 1] = 1
                seeds[labels == order[1] + 1] = 2
                _, idx = ndimage.distance_transform_edt(
                    seeds == 0, sampling=cspacing, return_indices=True
                )
                nearest = seeds[idx[0], idx[1], idx[2]]
                z, y, x = np.ogrid[: lung.shape[0], : lung.shape[1], : lung.shape[2]]
                full = nearest[z // 2, y // 2, x // 2]
                return [lung & (full == 1), lung & (full == 2)]
        if count == 0:
            break
    return [lung]


# --- lesions --------------------------------------------------------------------------------


def _lesions(
    work: NDArray[np.float32],
    lungs: NDArray[np.uint8],
    spacing: tuple[float, float, float],
    cfg: LesionConfig,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    lung = lungs > 0
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    ys = np.flatnonzero(lung.any(axis=(0, 2)))
    xs = np.flatnonzero(lung.any(axis=(0, 1)))
    margin = [int(np.ceil(3 * max(cfg.tube_sigmas_mm) / s)) for s in spacing]
    box = (
        slice(max(0, zs[0] - margin[0]), zs[-1] + 1 + margin[0]),
        slice(max(0, ys[0] - margin[1]), ys[-1] + 1 + margin[1]),
        slice(max(0, xs[0] - margin[2]), xs[-1] + 1 + margin[2]),
    )
    vol = work[box]
    inside = lung[box]
    smooth = ndimage.gaussian_filter(vol, [cfg.smooth_mm / s for s in spacing], truncate=2.5)
    lo, hi = cfg.ggo_hu[0], cfg.consolidation_hu[1]
    candidate = inside & (smooth >= lo) & (smooth <= hi)

    # Dense regions thicker than 2 x thick_mm (consolidation) are not searched for tubes: their
    # air bronchograms and their edges against the chest wall curve like vessels do. The
    # thickness counts the dense tissue outside the lung mask (thick_counts_chest_wall), but
    # not the mediastinum at the hilum, whose vessels would then count as thick.
    solid = (smooth >= cfg.consolidation_hu[0]) & (smooth <= hi)
    dense = inside & solid
    central = _central_distance(lungs[box], spacing, cfg)
    if cfg.thick_counts_chest_wall:
        wall = inside | (central >= cfg.hilum_mm)
        thick = _open(solid & wall, cfg.thick_mm, spacing) & dense
    else:
        thick = _open(dense, cfg.thick_mm, spacing)
    # ... nor ground glass thicker than 2 x opaque_mm: what runs through it belongs to it.
    ground_glass = candidate & (smooth < cfg.consolidation_hu[0])
    opaque = (
        _open(ground_glass, cfg.opaque_mm, spacing) if cfg.opaque_mm > 0 else np.zeros_like(thick)
    )
    exempt = thick | opaque
    tubes = _tubes(vol, candidate & ~exempt & (smooth >= cfg.tube_min_hu), spacing, cfg)
    structures = tubes
    if tubes.any() and cfg.rim_mm > 0:
        near = ndimage.distance_transform_edt(~tubes, sampling=spacing) <= cfg.rim_mm
        structures = tubes | (near & candidate & ~opaque)
    if spacing[0] >= cfg.line_min_slice_mm:
        structures = structures | _lines(vol, candidate & ~exempt, spacing, cfg)
    structures = structures | (candidate & (central < cfg.shell_mm))
    seeds = _drop_small(
        _open(candidate & ~structures, cfg.open_mm, spacing, cfg.open_z_mm),
        cfg.min_lesion_ml,
        spacing,
    )
    seeds = _hilar_rule(seeds, central, spacing, cfg)
    seeds = _drop_caps(seeds, smooth, inside, spacing, cfg)
    if not seeds.any():
        return np.zeros(lung.shape, bool), np.zeros(lung.shape, bool)
    # Grow the opacities back by grow_mm: over the vessels and septa that run through them
    # (removed above as structures) and out to their partial-volume border, down to
    # pv_margin_hu below the GGO range (the half-way surface of a faint GGO lies there).
    dist, idx = ndimage.distance_transform_edt(~seeds, sampling=spacing, return_indices=True)
    grown = inside & (dist <= cfg.grow_mm) & (smooth >= lo - cfg.pv_margin_hu) & (smooth <= hi)
    if cfg.half_max_growth and grown.any():
        labels, floors = _half_max_floors(seeds, dist, smooth, inside, spacing, cfg)
        at = np.nonzero(grown)
        nearest = labels[idx[0][at], idx[1][at], idx[2][at]]
        grown[at] = smooth[at] >= floors[nearest]
    if cfg.dense_grow_mm > 0:
        # A consolidation thicker than 2 x thick_mm takes back the dense voxels next to it that
        # the tube test removed: its thinner edges and lobulations curve like vessels, and a
        # vessel entering a consolidation cannot be told from it anyway.
        solid_seeds = seeds & thick
        if solid_seeds.any():
            # Distances only around the solid seeds (their box + dense_grow_mm): cheap.
            reach = [int(np.ceil(cfg.dense_grow_mm / s)) + 1 for s in spacing]
            sbox = tuple(
                slice(max(0, b.start - r), b.stop + r)
                for b, r in zip(_bbox(solid_seeds), reach, strict=True)
            )
            near_solid = ndimage.distance_transform_edt(~solid_seeds[sbox], sampling=spacing)
            grown[sbox] |= dense[sbox] & ~thick[sbox] & (near_solid <= cfg.dense_grow_mm)
    kept = seeds | grown
    ggo = kept & (smooth < cfg.consolidation_hu[0])
    # Voxels reached by growing (vessels inside GGO) take the class of their nearest seed.
    seed_ggo = (seeds & ggo)[idx[0], idx[1], idx[2]]
    added = kept & ~seeds
    ggo = (ggo & ~added) | (added & seed_ggo)
    cons = kept & ~ggo
    out_ggo = np.zeros(lung.shape, bool)
    out_cons = np.zeros(lung.shape, bool)
    out_ggo[box] = ggo & inside
    out_cons[box] = cons & inside
    return out_ggo, out_cons


def _half_max_floors(
    seeds: NDArray[np.bool_],
    seed_distance: NDArray[np.float64],
    smooth: NDArray[np.float32],
    inside: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    cfg: LesionConfig,
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """The seeds' components and, per component, the lowest HU it may grow into: its
    half-maximum surface (``floors[0]`` is for the background, unused).

    A ground-glass opacity blurred by the scanner (and by the slab of a thick slice) has its
    volume-defining surface half-way between its own density (median HU of the component)
    and the aerated lung around it (Gaussian-weighted mean of the lung below the GGO range
    within ~``half_max_bg_mm``): -730 for a faint GGO of -600 in lung of -860, -690 for a
    denser one of -520. Never below ``ggo_hu[0] - pv_margin_hu``. A consolidation keeps that
    floor: the ground-glass halo around it belongs to the lesion.
    """
    base = float(cfg.ggo_hu[0] - cfg.pv_margin_hu)
    labels, count = ndimage.label(seeds, structure=ndimage.generate_binary_structure(3, 2))
    floors = np.full(count + 1, base, np.float32)
    if count == 0:
        return labels, floors
    # Lung beyond the opacities' own blurred border (which would pull the estimate up), on a
    # grid decimated to ~1/3 of the scale: a smooth local mean, cheap.
    aerated = inside & (smooth < cfg.ggo_hu[0]) & (seed_distance > cfg.half_max_gap_mm)
    dec = [max(1, int(cfg.half_max_bg_mm / s / 3.0)) for s in spacing]
    sig = [cfg.half_max_bg_mm / (s * d) for s, d in zip(spacing, dec, strict=True)]
    coarse = (slice(None, None, dec[0]), slice(None, None, dec[1]), slice(None, None, dec[2]))
    weight = ndimage.gaussian_filter(aerated[coarse].astype(np.float32), sig, truncate=2.5)
    total = ndimage.gaussian_filter(
        np.where(aerated, smooth, 0.0)[coarse].astype(np.float32), sig, truncate=2.5
    )
    pts = np.nonzero(seeds)
    at = tuple(np.minimum(p // d, n - 1) for p, d, n in zip(pts, dec, weight.shape, strict=True))
    w = weight[at]
    lab = labels[pts]
    index = np.arange(1, count + 1)
    level = np.asarray(ndimage.median(smooth[pts], lab, index), np.float64)
    has_bg = w > 1e-3
    around = np.full(count, np.nan)
    if has_bg.any():
        bg = total[at][has_bg] / w[has_bg]
        around = np.asarray(ndimage.median(bg, lab[has_bg], index), np.float64)
        # ndimage.median answers something for a label with no samples: no background there.
        around[np.bincount(lab[has_bg], minlength=count + 1)[1:] == 0] = np.nan
    mid = 0.5 * (level + around)
    ground_glass = (level < cfg.consolidation_hu[0]) & np.isfinite(mid)
    floors[1:][ground_glass] = np.maximum(base, mid[ground_glass])
    return labels, floors


def _central_distance(
    lungs: NDArray[np.uint8], spacing: tuple[float, float, float], cfg: LesionConfig
) -> NDArray[np.float32]:
    """In-plane distance (mm) to the mediastinum in the hilar levels; inf elsewhere."""
    med = _mediastinum(lungs)
    zs = np.flatnonzero((lungs > 0).any(axis=(1, 2)))
    out = np.full(lungs.shape, np.inf, np.float32)
    if zs.size == 0:
        return out
    lo = zs[0] + cfg.hilum_levels[0] * (zs[-1] - zs[0])
    hi = zs[0] + cfg.hilum_levels[1] * (zs[-1] - zs[0])
    for k in range(lungs.shape[0]):
        if lo <= k <= hi and med[k].any():
            out[k] = ndimage.distance_transform_edt(~med[k], sampling=spacing[1:])
    return out


def _hilar_rule(
    seeds: NDArray[np.bool_],
    central: NDArray[np.float32],
    spacing: tuple[float, float, float],
    cfg: LesionConfig,
) -> NDArray[np.bool_]:
    """Drop seed components that sit at the hilum and do not extend peripherally.

    "Extends peripherally": the component's voxels beyond ``hilum_mm`` hold at least
    ``hilum_extension_ml`` in all (they may be split in pieces by the hilar cut-off).
    """
    near = seeds & (central < cfg.hilum_mm)
    if not near.any():
        return seeds
    labels, count = ndimage.label(seeds, structure=ndimage.generate_binary_structure(3, 2))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    outer_ml = np.bincount(labels[seeds & ~near], minlength=count + 1) * voxel_ml
    touches = np.zeros(count + 1, bool)
    touches[np.unique(labels[near])] = True
    keep = ~touches | (outer_ml >= cfg.hilum_extension_ml)
    keep[0] = False
    return np.asarray(keep[labels])


def _drop_caps(
    seeds: NDArray[np.bool_],
    smooth: NDArray[np.float32],
    inside: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    cfg: LesionConfig,
) -> NDArray[np.bool_]:
    """Drop seeds that are the partial volume of a curved surface cut by the slice.

    A slice that cuts the top of the diaphragm's dome (or the curved surface of the heart, the
    aortic arch, a hilar vessel) averages that tissue with the lung next to it: a hazy patch of
    ground-glass density in that one slice, with soft tissue (not lung) directly below or
    above its whole footprint. A seed no thicker than ``cap_mm`` (or one slice) along z whose
    voxels have non-lung tissue in the slice directly below or above for at least
    ``cap_support`` of them is such a cap, not an opacity: a lesion of >= ``min_lesion_ml``
    has lung above and below most of it.
    """
    if not seeds.any() or seeds.shape[0] < 2:
        return seeds
    tissue = ~inside & (smooth >= cfg.consolidation_hu[0])
    against = np.zeros(seeds.shape, bool)
    against[1:] = tissue[:-1]  # tissue in the slice below
    against[:-1] |= tissue[1:]  # ... or above
    labels, _count = ndimage.label(seeds, structure=ndimage.generate_binary_structure(3, 2))
    out = seeds.copy()
    max_slices = max(1, int(np.floor(cfg.cap_mm / spacing[0] + 1e-6)))
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or box[0].stop - box[0].start > max_slices:
            continue
        comp = labels[box] == i
        if float(against[box][comp].mean()) >= cfg.cap_support:
            out[box][comp] = False
    return out


def _lines(
    vol: NDArray[np.float32],
    where: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    cfg: LesionConfig,
) -> NDArray[np.bool_]:
    """Bright in-plane lines (vessels in the slice plane of thick slices), per slice 2-D Hessian."""
    found = np.zeros(vol.shape, bool)
    sig = [0.0, cfg.line_sigma_mm / spacing[1], cfg.line_sigma_mm / spacing[2]]
    g = ndimage.gaussian_filter(vol, sig, truncate=2.5)
    gy, gx = np.gradient(g, spacing[1], spacing[2], axis=(1, 2))
    gyy = np.gradient(gy, spacing[1], axis=1)
    gxx = np.gradient(gx, spacing[2], axis=2)
    gxy = np.gradient(gy, spacing[2], axis=2)
    s2 = cfg.line_sigma_mm**2
    half_tr = (gyy + gxx) / 2.0
    root = np.sqrt(((gyy - gxx) / 2.0) ** 2 + gxy**2)
    a, b = (half_tr + root) * s2, (half_tr - root) * s2  # b <= a
    big = np.where(np.abs(a) >= np.abs(b), a, b)
    small = np.where(np.abs(a) >= np.abs(b), b, a)
    line = (big <= -cfg.line_strength_hu) & (np.abs(small) <= cfg.tube_rb * np.abs(big))
    bg = ndimage.gaussian_filter(
        vol, [0.0, cfg.background_mm / spacing[1], cfg.background_mm / spacing[2]], truncate=2.5
    )
    found[where & line & (bg < cfg.line_background_hu)] = True
    return found


def _tubes(
    vol: NDArray[np.float32],
    where: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    cfg: LesionConfig,
) -> NDArray[np.bool_]:
    """Bright tubular voxels among ``where`` (multiscale Hessian, eigenvalues per voxel).

    Per scale one Gaussian smoothing (on a grid decimated so that sigma stays >= 1.5 voxels:
    large scales are cheap), then the second derivatives by central differences at the
    candidate voxels only.
    """
    found = np.zeros(vol.shape, bool)
    if not where.any():
        return found
    points = np.nonzero(where)
    # A vessel is a bright tube in aerated lung (or ground glass); inside a consolidation or
    # against the chest wall the surroundings are dense and a curvature there is no vessel.
    dec_bg = [max(1, int(cfg.background_mm / s / 1.5)) for s in spacing]
    coarse = vol[:: dec_bg[0], :: dec_bg[1], :: dec_bg[2]]
    bg = ndimage.gaussian_filter(
        coarse,
        [cfg.background_mm / (s * d) for s, d in zip(spacing, dec_bg, strict=True)],
        truncate=2.5,
    )
    in_air = bg[
        tuple(np.minimum(p // d, n - 1) for p, d, n in zip(points, dec_bg, bg.shape, strict=True))
    ]
    points = tuple(p[in_air < cfg.tube_background_hu] for p in points)
    if points[0].size == 0:
        return found
    for sigma_mm in cfg.tube_sigmas_mm:
        dec = [max(1, int(sigma_mm / s / 1.5)) for s in spacing]
        grid = vol[:: dec[0], :: dec[1], :: dec[2]] if max(dec) > 1 else vol
        gspacing = [s * d for s, d in zip(spacing, dec, strict=True)]
        g = ndimage.gaussian_filter(grid, [sigma_mm / s for s in gspacing], truncate=2.5)
        g = np.pad(g, 1, mode="edge")
        c = [np.minimum(p // d, n - 1) + 1 for p, d, n in zip(points, dec, grid.shape, strict=True)]
        hess = np.empty((points[0].size, 3, 3), np.float32)
        for i in range(3):
            for j in range(i, 3):
                if i == j:
                    up = list(c)
                    dn = list(c)
                    up[i] = c[i] + 1
                    dn[i] = c[i] - 1
                    v = g[tuple(up)] - 2 * g[tuple(c)] + g[tuple(dn)]
                else:
                    pp, pm, mp, mm = list(c), list(c), list(c), list(c)
                    pp[i], pp[j] = c[i] + 1, c[j] + 1
                    pm[i], pm[j] = c[i] + 1, c[j] - 1
                    mp[i], mp[j] = c[i] - 1, c[j] + 1
                    mm[i], mm[j] = c[i] - 1, c[j] - 1
                    v = (g[tuple(pp)] - g[tuple(pm)] - g[tuple(mp)] + g[tuple(mm)]) / 4.0
                # Per voxel^2 → per mm^2, times sigma^2 (scale normalisation: HU).
                v = v * (sigma_mm**2 / (gspacing[i] * gspacing[j]))
                hess[:, i, j] = v
                hess[:, j, i] = v
        eig = np.linalg.eigvalsh(hess)
        order_mag = np.argsort(np.abs(eig), axis=1)
        eig = np.take_along_axis(eig, order_mag, axis=1)
        l1, l2, l3 = np.abs(eig[:, 0]), eig[:, 1], eig[:, 2]
        bright = (l2 < 0) & (l3 < 0)
        rb = l1 / np.sqrt(np.maximum(l2 * l3, 1e-6))
        tube = bright & (rb <= cfg.tube_rb) & (-l2 >= cfg.tube_strength_hu)
        found[tuple(p[tube] for p in points)] = True
    return found


def _open(
    mask: NDArray[np.bool_],
    radius_mm: float,
    spacing: tuple[float, float, float],
    z_radius_mm: float | None = None,
) -> NDArray[np.bool_]:
    """Opening with a ball of ``radius_mm`` (``z_radius_mm`` along z; voxel spacing respected)."""
    if radius_mm <= 0 or not mask.any():
        return mask
    return np.asarray(
        ndimage.binary_opening(mask, structure=_ball(radius_mm, spacing, z_radius_mm))
    )


def _close(
    mask: NDArray[np.bool_], radius_mm: float, spacing: tuple[float, float, float]
) -> NDArray[np.bool_]:
    """Closing with a ball of ``radius_mm``; the border is padded so nothing sticks to it."""
    ball = _ball(radius_mm, spacing)
    pad = [(r, r) for r in np.array(ball.shape) // 2]
    closed = ndimage.binary_closing(np.pad(mask, pad), structure=ball)
    return np.asarray(
        closed[tuple(slice(p, p + n) for (p, _), n in zip(pad, mask.shape, strict=True))]
    )


def _drop_small(
    mask: NDArray[np.bool_], min_ml: float, spacing: tuple[float, float, float]
) -> NDArray[np.bool_]:
    if not mask.any():
        return mask
    labels, _count = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 2))
    sizes = np.bincount(labels.ravel()) * (float(np.prod(spacing)) / 1000.0)
    keep = sizes >= min_ml
    keep[0] = False
    return np.asarray(keep[labels])


def _mediastinum(lungs: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Per slice with both lungs, what lies between them: the convex hull of both minus the lungs.

    That is the mediastinum with the hilar vessels and main bronchi (outside the lung mask),
    plus the spine's front where the lungs wrap around it. Holes enclosed by one lung (the
    diaphragm dome cut across) are not mediastinum.
    """
    out = np.zeros(lungs.shape, bool)
    for k in range(lungs.shape[0]):
        sl = lungs[k]
        if not ((sl == 1).any() and (sl == 2).any()):
            continue
        inside = sl > 0
        pts = np.column_stack(np.nonzero(inside)[::-1]).astype(np.int32)
        hull = np.zeros(sl.shape, np.uint8)
        cv2.fillPoly(hull, [cv2.convexHull(pts)], 1)
        gap = (hull > 0) & ~ndimage.binary_fill_holes(inside)
        # Only the gaps that touch both lungs lie between them; a pocket of the hull against
        # one lung's outer surface (a dense lesion at the chest wall) is not mediastinum.
        labels, count = ndimage.label(gap)
        if count == 0:
            continue
        near1 = np.unique(labels[ndimage.binary_dilation(sl == 1, iterations=2)])
        near2 = np.unique(labels[ndimage.binary_dilation(sl == 2, iterations=2)])
        both = np.intersect1d(near1, near2)
        out[k] = np.isin(labels, both[both > 0])
    return out
