"""Small generated DICOM instances for the intake tests (no shared data, no PHI): CT slices
of one series, and the same made into what the intake must refuse."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)


def ct_instance(
    study_uid: str, series_uid: str, index: int, *, patient: str = "Doe^Jane", size: int = 32
) -> Dataset:
    """One axial CT slice (``size``² int16 HU values), slice ``index`` of its series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient, "PID-4711", "19600101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.AccessionNumber = "20260101", "ACC-1"
    ds.InstanceNumber = index + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * 2.0]
    ds.SliceThickness, ds.PixelSpacing = 2.0, [0.7, 0.7]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    pixels = np.full((size, size), -800, dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ct_series(count: int, **kwargs: object) -> list[bytes]:
    study, series = generate_uid(), generate_uid()
    return [part10(ct_instance(study, series, i, **kwargs)) for i in range(count)]  # type: ignore[arg-type]


def mr_instance() -> Dataset:
    """A CT slice relabelled as MR (class and modality): not what this service reads."""
    ds = ct_instance(generate_uid(), generate_uid(), 0)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.Modality = "MR"
    return ds


def short_pixels_instance() -> Dataset:
    """A well-formed file whose pixel data holds half of what its header says: a sender
    sends it (the element is whole), the image is not."""
    ds = ct_instance(generate_uid(), generate_uid(), 0)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds
