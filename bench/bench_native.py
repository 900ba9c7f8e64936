"""The viewer's native slices: what writing ``native.bin`` adds to the preprocess stage, and
what one windowed PNG costs to serve, against reading and preprocessing the same series."""

from __future__ import annotations

from bench.common import best_of, report, sample_series
from services.common.config import get_settings
from services.common.native_slices import WINDOWS, decode_native, pack_native, render_png
from services.preprocess.pipeline import PreprocessOptions, preprocess_study
from services.preprocess.readers import read_study


def main() -> dict[str, float]:
    series = sample_series()
    study = read_study(series, get_settings())
    hu = study.hu
    assert hu is not None, "the sample series has Hounsfield units"
    prepared = preprocess_study(study, PreprocessOptions())
    n = len(study)
    t_read = best_of(lambda: read_study(series, get_settings()), repeats=1)
    t_prep = best_of(lambda: preprocess_study(study, PreprocessOptions()), repeats=1)
    t_pack = best_of(lambda: pack_native(list(hu), prepared.lung_masks), repeats=1)
    blob, entries = pack_native(list(hu), prepared.lung_masks)
    start, length = entries[n // 2]["image"]
    part = blob[start : start + length]
    t_png = best_of(lambda: render_png(decode_native(part, "hu"), WINDOWS["lung"]))
    return report(
        {
            "slices": n,
            "native_blob_mb": len(blob) / 1e6,
            "native_blob_vs_raw_int16": len(blob) / hu.nbytes,
            "slice_read_kb": length / 1e3,
            "pack_s": t_pack,
            "ratio_pack_vs_read_plus_preprocess": t_pack / (t_read + t_prep),
            "png_ms": 1000 * t_png,
        }
    )


if __name__ == "__main__":
    main()
