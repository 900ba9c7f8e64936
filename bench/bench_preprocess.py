"""Preprocessing slices/s against the bare decode of the same DICOM files."""

from __future__ import annotations

import pydicom

from bench.common import best_of, report, sample_series
from services.common.config import get_settings
from services.preprocess.pipeline import PreprocessOptions, preprocess_study
from services.preprocess.readers import read_study


def main() -> dict[str, float]:
    series = sample_series()
    files = sorted(series.iterdir())

    def bare_decode() -> None:
        for f in files:
            _ = pydicom.dcmread(f).pixel_array

    study = read_study(series, get_settings())
    n = len(study)
    t_decode = best_of(bare_decode)
    t_read = best_of(lambda: read_study(series, get_settings()))
    t_prep = best_of(lambda: preprocess_study(study, PreprocessOptions()))
    t_total = t_read + t_prep
    result = {
        "slices": n,
        "bare_decode_slices_per_s": n / t_decode,
        "read_slices_per_s": n / t_read,
        "preprocess_slices_per_s": n / t_prep,
        "read_plus_preprocess_slices_per_s": n / t_total,
        "ratio_read_plus_preprocess_vs_decode": t_decode / t_total,
    }
    return report(result)


if __name__ == "__main__":
    main()
