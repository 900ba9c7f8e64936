"""One entry point for every upload: ``read_study(path)`` → ``Study``.

Formats are recognised by content (magic bytes), never by name alone: DICOM (``DICM`` at
128, or a bare dataset), PNG, JPEG, zip, tar (plain or compressed) and NIfTI (``.nii`` /
``.nii.gz`` names, or the NIfTI magic). A name that promises a format the content does not
deliver is a corrupt file; content nothing can read is an unsupported format. Every problem
the uploader can cause ends as a ``StudyError``; nothing else escapes for bad input.
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from PIL import Image, ImageOps

from services.common.config import Settings
from services.common.errors import ErrorCode, StudyError
from services.common.formats import looks_like_dicom
from services.preprocess.archive import RATIO_GRACE_BYTES, archive_kind, extract_archive
from services.preprocess.dicom import (
    hu_to_int16,
    scan_dicom_headers,
    study_from_scan,
)
from services.preprocess.plausibility import check_chest_ct
from services.preprocess.types import Gray8, Study
from services.preprocess.windowing import window_to_uint8

FileKind = Literal["dicom", "png", "jpeg", "zip", "tar", "nifti", "unknown"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
_HEAD_BYTES = 544  # enough for the NIfTI-2 header magic and the DICOM preamble
# What a file name promises, to tell a damaged file from one we cannot read at all.
_CLAIMED_BY_SUFFIX = {
    ".dcm": "DICOM",
    ".dicom": "DICOM",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".zip": "zip",
    ".tar": "tar",
    ".tgz": "tar",
    ".gz": "gzip",
    ".nii": "NIfTI",
}


def read_study(path: Path, settings: Settings, check_plausibility: bool = True) -> Study:
    """Read whatever ``path`` is (folder, archive, DICOM, NIfTI, PNG/JPEG) into a Study.

    Unless ``check_plausibility`` is False, a study that is clearly not a chest CT (noise, a
    photograph, a radiograph, a head scan...) raises ``not_chest_ct``
    (:func:`services.preprocess.plausibility.check_chest_ct`): every upload passes here before
    it can be scored.
    """
    path = Path(path)
    if path.is_dir():
        study = _read_folder(path, settings)
    elif not path.is_file():
        raise StudyError(ErrorCode.EMPTY_STUDY, f"nothing to read at {path.name}")
    else:
        study = _read_file(path, settings)
    if check_plausibility:
        check_chest_ct(study)
    return study


def detect_format(path: Path) -> FileKind:
    """What ``path`` holds, judged by its bytes (and for NIfTI, its name)."""
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    # DICOM first: its 128-byte preamble may legally hold another format's signature.
    if looks_like_dicom(head):
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:4] in _ZIP_MAGICS:
        return "zip"
    if _is_nifti(path, head):
        return "nifti"
    if archive_kind(path) == "tar":
        return "tar"
    return "unknown"


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key putting ``slice2`` before ``slice10`` (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts if p)


def load_gray_image(path: Path, label: str | None = None) -> Gray8:
    """A PNG/JPEG of any mode as 8-bit grey (already windowed: no HU windowing)."""
    return _load_image(path, label)[0]


def _load_image(path: Path, label: str | None = None) -> tuple[Gray8, float]:
    """The grey image and its colourfulness (0 for grey; photographs score 30 and more),
    which the plausibility check reads from ``slice_info`` (the grey image has lost it)."""
    label = label or path.name
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncation shows up here, not later
            upright = ImageOps.exif_transpose(im)
            return _to_gray(upright), colourfulness(upright)
    except Image.DecompressionBombError as exc:
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"{label}: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise StudyError(ErrorCode.CORRUPT_FILE, f"cannot decode image {label}: {exc}") from exc


# --- dispatch ------------------------------------------------------------------------------


def _read_file(path: Path, settings: Settings) -> Study:
    try:
        kind = detect_format(path)
    except OSError as exc:
        raise StudyError(ErrorCode.CORRUPT_FILE, f"cannot read {path.name}: {exc}") from exc
    if kind == "dicom":
        return study_from_scan(scan_dicom_headers([path]), settings)
    if kind in ("png", "jpeg"):
        image, colour = _load_image(path)
        return Study(
            images=[image],
            source_format="image",
            is_volume=False,
            slice_info=[{"file": path.name, "colourfulness": colour}],
        )
    if kind in ("zip", "tar"):
        return _read_archive(path, settings)
    if kind == "nifti":
        return read_nifti(path, settings)
    claimed = _claimed_format(path)
    if claimed:
        raise StudyError(ErrorCode.CORRUPT_FILE, f"{path.name} is not a readable {claimed} file")
    raise StudyError(
        ErrorCode.UNSUPPORTED_FORMAT,
        f"{path.name}: not DICOM, PNG, JPEG, NIfTI, zip or tar",
    )


def _claimed_format(path: Path) -> str | None:
    return _CLAIMED_BY_SUFFIX.get(path.suffix.lower())


def _read_archive(path: Path, settings: Settings) -> Study:
    # Everything is decoded into memory before the temporary folder goes away.
    with tempfile.TemporaryDirectory(prefix="covidct-upload-") as tmp:
        root = Path(tmp)
        extract_archive(path, root, settings)
        return _read_folder(root, settings, what=f"archive {path.name}")


def _read_folder(root: Path, settings: Settings, what: str | None = None) -> Study:
    what = what or f"folder {root.name}"
    files = _list_files(root)
    if not files:
        raise StudyError(ErrorCode.EMPTY_STUDY, f"{what} holds no files")
    kinds: dict[FileKind, list[Path]] = {}
    for f in files:
        kinds.setdefault(_kind_or_unknown(f), []).append(f)
    # DICOM wins over images in a mixed folder: it carries HU and geometry.
    if kinds.get("dicom"):
        scan = scan_dicom_headers(kinds["dicom"], root)
        if scan.has_dicom or not (kinds.get("png") or kinds.get("jpeg")):
            return study_from_scan(scan, settings)
    images = kinds.get("png", []) + kinds.get("jpeg", [])
    if images:
        return _read_image_set(images, root, settings)
    niftis = kinds.get("nifti", [])
    if len(niftis) == 1:
        return read_nifti(niftis[0], settings)
    if niftis:
        raise StudyError(
            ErrorCode.UNSUPPORTED_FORMAT, f"{what} holds {len(niftis)} NIfTI volumes; send one"
        )
    if kinds.get("zip") or kinds.get("tar"):
        raise StudyError(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"{what}: nested archives are not read",
        )
    raise StudyError(
        ErrorCode.UNSUPPORTED_FORMAT,
        f"{what}: none of its {len(files)} files is DICOM, PNG, JPEG or NIfTI",
    )


def _list_files(root: Path) -> list[Path]:
    """Regular files under ``root``, skipping dotfiles and macOS ``__MACOSX`` folders."""
    found: list[Path] = []
    # followlinks=False: a linked folder could loop or lead outside the upload.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        found.extend(
            Path(dirpath, name)
            for name in sorted(filenames)
            if not name.startswith(".") and Path(dirpath, name).is_file()
        )
    return found


def _kind_or_unknown(path: Path) -> FileKind:
    try:
        return detect_format(path)
    except OSError:
        return "unknown"  # unreadable file in a folder: ignored like any other stray file


# --- image sets ----------------------------------------------------------------------------


def _read_image_set(images: list[Path], root: Path, settings: Settings) -> Study:
    if len(images) > settings.max_slices:
        raise StudyError(
            ErrorCode.TOO_MANY_SLICES,
            f"{len(images)} images, the limit is {settings.max_slices}",
        )
    labels = sorted(
        (p.relative_to(root).as_posix() for p in images), key=lambda s: (natural_key(s), s)
    )
    loaded = [_load_image(root / label, label) for label in labels]
    return Study(
        images=[image for image, _ in loaded],
        source_format="image_set",
        is_volume=False,
        slice_info=[
            {"file": label, "index": i, "colourfulness": colour}
            for i, (label, (_, colour)) in enumerate(zip(labels, loaded, strict=True))
        ],
    )


def _to_gray(im: Image.Image) -> Gray8:
    if im.mode in ("I;16", "I;16L", "I;16B", "I", "F"):
        return _stretch(np.asarray(im))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels carry arbitrary colour; show them as the black CT background.
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def colourfulness(im: Image.Image) -> float:
    """Hasler & Süsstrunk (2003) colourfulness of an image, on a thumbnail of at most 128 px:
    0 for grey images, about 15 for slightly tinted ones, 30+ for photographs."""
    if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return 0.0
    small = im.convert("RGB")
    small.thumbnail((128, 128))
    rgb = np.asarray(small, dtype=np.float32)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    spread = float(np.hypot(rg.std(), yb.std()))
    return round(spread + 0.3 * float(np.hypot(rg.mean(), yb.mean())), 2)


def _stretch(values: np.ndarray[Any, Any]) -> Gray8:
    """16-bit/float grey to 8 bits: keep 8-bit data as is, else stretch min..max."""
    arr = np.nan_to_num(values.astype(np.float64))
    low, high = float(arr.min()), float(arr.max())
    if low >= 0 and high <= 255:
        return np.rint(arr).astype(np.uint8)
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - low) * (255.0 / (high - low))).astype(np.uint8)


# --- NIfTI ---------------------------------------------------------------------------------


def _is_nifti(path: Path, head: bytes) -> bool:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return True
    if head.startswith(_GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(_HEAD_BYTES)
        except (OSError, EOFError, zlib.error):
            return False
    return _nifti_magic(head)


def _nifti_magic(head: bytes) -> bool:
    # NIfTI-1 single file: "n+1\0" at 344; NIfTI-2: "n+2\0" at 4.
    return head[344:348] == b"n+1\x00" or head[4:8] == b"n+2\x00"


def read_nifti(path: Path, settings: Settings) -> Study:
    """A NIfTI volume in radiological axial view, slices inferior → superior.

    The volume is reoriented to RAS+ (``as_closest_canonical``): axis 0 runs from the
    patient's left to right, axis 1 posterior → anterior, axis 2 inferior → superior. Each
    axial slice is transposed and flipped on both axes so that anterior is at the top and the
    patient's right on the image's left, as a viewer shows an axial CT (and as the DICOM
    pixels of a head-first supine series are stored).
    """
    img = _load_nifti(path, settings)
    shape = tuple(int(d) for d in img.header.get_data_shape())
    if len(shape) < 3 or any(d != 1 for d in shape[3:]):
        raise StudyError(
            ErrorCode.UNSUPPORTED_FORMAT, f"{path.name}: expected one 3-D volume, got {shape}"
        )
    _check_nifti_limits(path, img, shape, settings)
    try:
        canonical = nib.as_closest_canonical(img)
        volume = canonical.get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as exc:  # nibabel/gzip raise many types on damaged data
        raise StudyError(ErrorCode.CORRUPT_FILE, f"cannot read NIfTI {path.name}: {exc}") from exc
    volume = volume.reshape(volume.shape[:3])
    # (slice, row, column) in the radiological view described above.
    axial = np.ascontiguousarray(volume[::-1, ::-1, :].transpose(2, 1, 0))
    images = [window_to_uint8(axial[k]) for k in range(axial.shape[0])]
    zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
    z_mm = [float((canonical.affine @ np.array([0.0, 0.0, k, 1.0]))[2]) for k in range(len(images))]
    return Study(
        images=images,
        source_format="nifti",
        is_volume=len(images) > 1,
        slice_info=[
            {"file": path.name, "index": k, "position": z, "sort_by": "nifti_axis"}
            for k, z in enumerate(z_mm)
        ],
        spacing_mm=(zooms[2], zooms[1], zooms[0]),
        hu=hu_to_int16(axial),
        # The radiological view built above (anterior up, the patient's right on the left).
        series={"orientation": {"left": "R", "right": "L", "top": "A", "bottom": "P"}},
    )


def _load_nifti(path: Path, settings: Settings) -> Any:
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            return nib.load(path)
        # nibabel picks the reader by extension; other names are read from bytes.
        data = _read_capped(path, settings)
        klass = nib.Nifti2Image if data[4:8] == b"n+2\x00" else nib.Nifti1Image
        return klass.from_bytes(data)
    except StudyError:
        raise
    except Exception as exc:  # nibabel raises many types on damaged headers
        raise StudyError(ErrorCode.CORRUPT_FILE, f"cannot read NIfTI {path.name}: {exc}") from exc


def _read_capped(path: Path, settings: Settings) -> bytes:
    limit = settings.max_uncompressed_bytes
    with path.open("rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"{path.name} unpacks to over {limit} bytes")
    return bytes(data)


def _check_nifti_limits(path: Path, img: Any, shape: tuple[int, ...], settings: Settings) -> None:
    """Refuse before loading voxels: too many slices, or a decompression bomb."""
    try:
        ornt = nib.io_orientation(img.affine)
        slice_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    except Exception:  # degenerate affine: the canonical last axis is still the guess
        slice_axis = 2
    slices = shape[slice_axis]
    if slices > settings.max_slices:
        raise StudyError(
            ErrorCode.TOO_MANY_SLICES, f"{slices} slices, the limit is {settings.max_slices}"
        )
    declared = int(np.prod(shape)) * int(img.header.get_data_dtype().itemsize)
    if declared > settings.max_uncompressed_bytes:
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"{path.name} declares {declared} bytes")
    stored = path.stat().st_size
    ratio = declared / max(stored, 1)
    if declared > RATIO_GRACE_BYTES and ratio > settings.max_compression_ratio:
        raise StudyError(
            ErrorCode.UNSAFE_ARCHIVE, f"{path.name}: compression ratio {ratio:.0f} (bomb?)"
        )
