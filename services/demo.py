"""`make demo`: diagnose a sample study with the shipped models and say which one it was.

The shared COVID-CT-MD series P002 (COVID, 133 slices, JPEG-Lossless) when ../shared/data is
there; otherwise pydicom's own CT_small.dcm, a real 128x128 CT slice shipped in its wheel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.common.config import get_settings
from services.common.errors import StudyError
from services.common.logging import configure_logging


def sample_study() -> tuple[Path, str]:
    series = get_settings().data_dir / "covid-ct-md" / "P002"
    if series.is_dir():
        return series, "shared COVID-CT-MD series P002 (known diagnosis: COVID, 133 slices)"
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        raise SystemExit(
            "no sample study: ../shared/data is missing and pydicom has no CT_small.dcm"
        )
    return Path(str(path)), "pydicom's CT_small.dcm (one 128x128 CT slice; no known diagnosis)"


def main() -> int:
    configure_logging("WARNING")
    from services.diagnosis import diagnose_path

    path, description = sample_study()
    print(f"sample study: {description}\n  path: {path}")
    try:
        result, _ = diagnose_path(path)
    except StudyError as error:
        print(f"error: {error.code.value}: {error.message}")
        return 2
    probs = ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())
    print(f"verdict: {result.label} ({probs})")
    print(
        f"slices used {result.slices_used} of {result.slices_total}; models {result.model_versions}"
    )
    print("timings (s): " + json.dumps({k: round(v, 3) for k, v in result.timings.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
