"""One row of a ``.npy`` array blob, read with two ranged reads (the header, then the row).

The slice viewer asks for one slice of a stack of hundreds: over S3 this is a few hundred KB
per PNG instead of downloading the whole stack to a local cache on the pod's scratch disk.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from numpy.lib import format as npy_format

from services.common.storage import BlobStorage

MAGIC = b"\x93NUMPY"
_PREAMBLE = 12  # magic (6), version (2), header length (2 for v1, 4 for v2/v3)


class NotARowStack(ValueError):
    """The blob is not a C-ordered ``.npy`` array of at least one dimension."""


def npy_row(storage: BlobStorage, key: str, index: int) -> np.ndarray | None:
    """Row ``index`` of the array stored at ``key`` (None past its end);
    ``FileNotFoundError`` when there is no blob."""
    preamble = storage.get_range(key, 0, _PREAMBLE)
    if len(preamble) < 10 or not preamble.startswith(MAGIC):
        raise NotARowStack(f"{key} is not a .npy array")
    major = preamble[6]
    if major == 1:
        data_offset = 10 + struct.unpack("<H", preamble[8:10])[0]
    else:
        data_offset = 12 + struct.unpack("<I", preamble[8:12])[0]
    header = io.BytesIO(storage.get_range(key, 0, data_offset))
    version = npy_format.read_magic(header)
    read_header = (
        npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read_header(header)
    if fortran_order or not shape or dtype.hasobject:
        raise NotARowStack(f"{key} is not a C-ordered array of rows")
    if index >= shape[0]:
        return None
    row_shape = tuple(shape[1:])
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    data = storage.get_range(key, data_offset + index * row_bytes, row_bytes)
    if len(data) != row_bytes:
        raise NotARowStack(f"{key} is shorter than its header says")
    return np.frombuffer(data, dtype=dtype).reshape(row_shape)
