"""The viewer's native slices (services.common.native_slices) and orientation labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.common.native_slices import (
    decode_mask,
    decode_native,
    mask_overlay_png,
    pack_native,
    parse_window,
    render_png,
)
from services.preprocess.dicom import edge_labels


def _decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def test_pack_keeps_hu_and_masks_losslessly_per_slice() -> None:
    rng = np.random.default_rng(0)
    hu = [rng.integers(-1024, 3000, (6, 5)).astype(np.int16) for _ in range(3)]
    hu[1][0, 0], hu[1][0, 1] = -32768, 32767  # the int16 extremes survive
    masks = [rng.random((6, 5)) > 0.5 for _ in range(3)]
    blob, entries = pack_native(hu, [masks[0], None, masks[2]])
    assert [e["kind"] for e in entries] == ["hu", "hu", "hu"]
    assert entries[1]["mask"] is None and (entries[0]["rows"], entries[0]["columns"]) == (6, 5)
    for k, entry in enumerate(entries):
        start, length = entry["image"]
        np.testing.assert_array_equal(
            decode_native(blob[start : start + length], "hu").pixels, hu[k]
        )
    start, length = entries[2]["mask"]
    np.testing.assert_array_equal(decode_mask(blob[start : start + length]), masks[2])


def test_windows_render_hu_and_leave_grey_images_alone() -> None:
    hu = np.array([[-1000, -600, 40, 400]], np.int16)
    blob, (entry,) = pack_native([hu], [None])
    native = decode_native(blob, "hu")
    lung = _decode(render_png(native, parse_window("lung")))
    mediastinal = _decode(render_png(native, parse_window("mediastinal")))
    assert lung.tolist() == [[60, 128, 236, 255]]  # W1500 L-600: -1350..150 HU
    assert mediastinal.tolist() == [[0, 0, 128, 255]]  # W400 L40: -160..240 HU
    assert parse_window("400,40") == parse_window("mediastinal")
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    blob, (entry,) = pack_native([grey], [None])
    assert entry["kind"] == "gray"
    shown = _decode(render_png(decode_native(blob, "gray"), (1, 0)))
    np.testing.assert_array_equal(shown, grey)


@pytest.mark.parametrize("bad", ["bone", "0,40", "400", "400,40,1", "nan,1", "400,9000"])
def test_bad_windows_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_window(bad)


def test_mask_overlay_is_rgba_transparent_off_the_lung() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    rgba = _decode(mask_overlay_png(mask))
    assert rgba.shape == (4, 4, 4)
    assert (rgba[..., 3] > 0).tolist() == mask.tolist()


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        ((1, 0, 0, 0, 1, 0), {"left": "R", "right": "L", "top": "A", "bottom": "P"}),  # supine
        ((-1, 0, 0, 0, -1, 0), {"left": "L", "right": "R", "top": "P", "bottom": "A"}),  # prone
        ((1, 0, 0, 0, 0, -1), {"left": "R", "right": "L", "top": "H", "bottom": "F"}),  # coronal
        (
            (0.94, 0.34, 0, -0.34, 0.94, 0),
            {"left": "RA", "right": "LP", "top": "AL", "bottom": "PR"},
        ),
    ],
)
def test_edge_labels_follow_image_orientation_patient(
    iop: tuple[float, ...], expected: dict[str, str]
) -> None:
    assert edge_labels(iop) == expected


def test_no_orientation_without_a_usable_header() -> None:
    assert edge_labels(None) is None
    assert edge_labels((0, 0, 0, 0, 0, 0)) is None
