"""Format sniffing shared by ingest (de-identification) and preprocessing (readers)."""

from __future__ import annotations

DICOM_PREAMBLE = 128


def looks_like_dicom(head: bytes) -> bool:
    """DICOM by content: ``DICM`` after the preamble, or a bare dataset (group 0008 first)."""
    if head[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] == b"DICM":
        return True
    # Files written without the Part-10 preamble start with a (0008,xxxx) tag followed by
    # an explicit VR or a small implicit length.
    if len(head) < 8 or head[:2] != b"\x08\x00":
        return False
    explicit_vr = head[4:6].isalpha() and head[4:6].isupper()
    return explicit_vr or int.from_bytes(head[4:8], "little") < 256
