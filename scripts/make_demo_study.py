"""Write the small demo study shipped in the repository: demo/covid-ct-md-P002/.

A derived copy of COVID-CT-MD series P002 (COVID-19; CC BY 4.0, Afshar et al., Scientific
Data 8, 121 (2021)): every 3rd slice of the whole series (slices sorted inferior → superior
by ImagePositionPatient), each downsampled from 512x512 to 256x256 by 2x2 averaging of the
Hounsfield units, stored as signed 16-bit HU (RescaleSlope 1, RescaleIntercept 0) with the RLE
Lossless transfer syntax (encoded and decoded by pydicom itself, no plugin needed).
PixelSpacing is doubled and ImagePositionPatient moved to the centre of the new first pixel.
UIDs are new, valid and derived from the source UIDs, so the output is deterministic.

Usage: .venv/bin/python -m scripts.make_demo_study [--data-dir DIR] [--out demo/covid-ct-md-P002]
The data directory defaults to $COVIDCT_DATA_DIR, else /work/shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

SERIES = "P002"
STEP = 3  # every 3rd slice: 45 of 133, 6 mm apart
FACTOR = 2  # 512 -> 256
SOURCE = "COVID-CT-MD (Afshar P. et al., Scientific Data 8, 121 (2021)), series P002, CC BY 4.0"
DERIVATION = (
    f"COVID-CT-MD P002, every {STEP}rd slice, downsampled 512->256 by 2x2 mean of HU, RLE Lossless"
)
# Public, non-identifying acquisition attributes copied from the source slices.
_COPIED = (
    "Manufacturer",
    "ManufacturerModelName",
    "PatientSex",
    "PatientAge",
    "BodyPartExamined",
    "SliceThickness",
    "KVP",
    "ConvolutionKernel",
    "PatientPosition",
    "ImageOrientationPatient",
    "SliceLocation",
)


def default_data_dir() -> Path:
    return Path(os.environ.get("COVIDCT_DATA_DIR") or "/work/shared/data")


def _uid(*parts: str) -> UID:
    return generate_uid(entropy_srcs=["covidct-demo-v1", *parts])


def _sorted_slices(series_dir: Path) -> list[Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the source writes UUIDs as UIDs
        datasets = [pydicom.dcmread(f) for f in sorted(series_dir.glob("*.dcm"))]
    return sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))


def _downsample(hu: np.ndarray) -> np.ndarray:
    h, w = hu.shape
    blocks = hu.reshape(h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(1, 3))
    return np.rint(blocks).astype(np.int16)


def _derived(src: Dataset, number: int, hu: np.ndarray, series_uid: UID) -> Dataset:
    iop = [float(v) for v in src.ImageOrientationPatient]
    row_mm, col_mm = (float(v) for v in src.PixelSpacing)
    ipp = np.array([float(v) for v in src.ImagePositionPatient])
    # Centre of the new first pixel: half an old pixel further along rows and columns.
    shift = (FACTOR - 1) / 2.0
    ipp = ipp + shift * col_mm * np.array(iop[:3]) + shift * row_mm * np.array(iop[3:])

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = _uid(SERIES, "instance", str(number))
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.StudyDescription = "COVID-CT-MD P002 demo (derived, CC BY 4.0)"
    ds.SeriesDescription = "Thorax axial, every 3rd slice, 256x256"
    ds.DerivationDescription = DERIVATION
    ds.PatientName = "COVID-CT-MD^P002"
    ds.PatientID = "P002"
    ds.PatientBirthDate = ""
    for keyword in _COPIED:
        if keyword in src:
            setattr(ds, keyword, src[keyword].value)
    ds.StudyInstanceUID = _uid(SERIES, "study")
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(SERIES, "frame")
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
    ds.PixelSpacing = [f"{row_mm * FACTOR:.6f}", f"{col_mm * FACTOR:.6f}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    ds.PixelData = hu.tobytes()
    ds.compress(RLELossless, hu, generate_instance_uid=False)
    return ds


def write_demo(data_dir: Path, out: Path) -> list[Path]:
    series_dir = data_dir / "covid-ct-md" / SERIES
    if not series_dir.is_dir():
        raise SystemExit(f"missing source series {series_dir}")
    slices = _sorted_slices(series_dir)
    chosen = slices[::STEP]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.dcm"):
        old.unlink()
    series_uid = _uid(SERIES, "series")
    written = []
    for number, src in enumerate(chosen, start=1):
        hu = src.pixel_array.astype(np.float64) * float(src.RescaleSlope) + float(
            src.RescaleIntercept
        )
        ds = _derived(src, number, _downsample(hu), series_uid)
        path = out / f"IM{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    diagnosis = {
        "diagnosis": "COVID",
        "source": SOURCE,
        "source_series": SERIES,
        "source_slices": len(slices),
        "slices": len(chosen),
        "source_slice_indices": list(range(0, len(slices), STEP)),
        "license": "CC BY 4.0",
        "derivation": DERIVATION,
    }
    (out / "diagnosis.json").write_text(json.dumps(diagnosis, indent=2) + "\n")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=Path("demo") / "covid-ct-md-P002")
    args = parser.parse_args()
    written = write_demo(args.data_dir, args.out)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} slices, {total / 1e6:.2f} MB, to {args.out}")


if __name__ == "__main__":
    main()
