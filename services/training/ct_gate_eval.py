"""How often the not_chest_ct gate refuses real chest CT (per shared source) and generated
non-CT images (per kind): the false-refusal / true-refusal table of issue 18 item 15.

Every real image of the shared sets is judged on its own (the single-image gate, as a PNG/JPEG
upload of that one image is); COVID-CT-MD and the demo study are judged as uploaded (DICOM
series, HU path) and slice by slice as 8-bit exports in a lung window (W1500 L-600) and a
soft-tissue window (W400 L40), as a hospital PACS export may be in either. The generated
non-CT kinds (``tests/support/nonct.py``, needs the repository's tests package) are saved as
PNG and JPEG and read back through :func:`read_study`.

The script only imports :func:`services.preprocess.plausibility.assess` and the readers, so
the "before" column is the same script run against an older checkout::

    PYTHONPATH=. python -m services.training.ct_gate_eval --data-dir ../shared/data
    PYTHONPATH=/path/to/old/checkout:. python services/training/ct_gate_eval.py ...

Measured on issue 18 (before: main at 2052e6b; after: this gate). Real CT refused: 0 of every
source before and after, except COVID-CT-MD soft-tissue slices, 1 of 418 both times (P002
slice 128, the older radiograph rule). Generated non-CT refused, before -> after (6 each):
drawings (flat, smoothed noise, cartoon, blurred) 0 -> 6, projections (3 kinds) 0 -> 6,
smooth noise 2 -> 6, smooth noise in a body 0 -> 6, chart 0 -> 6; colour photo, white noise,
noise in a body, text 6 -> 6; grey photograph 0 -> 0 (then a known gap).

Grey photographs (before: main at 2e45318; after: the shading rule): real CT refused
unchanged (0 everywhere, COVID-CT-MD soft-tissue 1 of 418: P002 slice 128, the radiograph
rule); grey landscape, portrait and room photographs 0 -> 6 each. ``shading_share`` on the
real sets: at most 0.137 (UCSD paper figures), 0.111 (sarscov2-ct), <= 0.056 elsewhere;
generated grey photographs >= 0.24; the refusal threshold is 0.2. The texture thresholds were
chosen on the generated kinds with a margin to these real sets, so the real-CT column is
fitted data, not a held-out estimate.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from services.common.config import get_settings
from services.preprocess.plausibility import assess
from services.preprocess.readers import read_study
from services.preprocess.types import Study
from services.preprocess.windowing import window_to_uint8

REPO = Path(__file__).resolve().parents[2]
WINDOWS = {"lung": (-600.0, 1500.0), "soft": (40.0, 400.0)}


def _image_study(image: np.ndarray) -> Study:
    return Study(images=[image], source_format="image", is_volume=False)


def real_cases(data_dir: Path) -> Iterator[tuple[str, str, Study]]:
    """(source, item, study) for every real CT image or series of the shared sets."""
    settings = get_settings()
    for folder in ("ucsd-covid-ct", "sarscov2-ct", "real-ct-slices", "lesion-masks-2d"):
        with (data_dir / folder / "labels.csv").open() as fh:
            for row in csv.DictReader(fh):
                source = folder if folder != "real-ct-slices" else f"{folder}/{row['source']}"
                path = data_dir / folder / row["file"]
                yield source, row["file"], read_study(path, settings, check_plausibility=False)
    for path in sorted((data_dir / "lung-masks" / "images").glob("*.png")):
        yield "lung-masks", path.name, read_study(path, settings, check_plausibility=False)
    for path in sorted((data_dir / "dicom-single-slice").glob("*.dcm")):
        yield "dicom-single-slice", path.name, read_study(path, settings, check_plausibility=False)
    series = [data_dir / "covid-ct-md" / n for n in ("P002", "cap002", "normal001")]
    for path in [*series, REPO / "demo" / "covid-ct-md-P002"]:
        name = "demo" if path.parent.name == "demo" else "covid-ct-md"
        study = read_study(path, settings, check_plausibility=False)
        yield f"{name} series", path.name, study
        assert study.hu is not None
        for window, (center, width) in WINDOWS.items():
            for i, hu in enumerate(study.hu):
                image = window_to_uint8(hu, center, width)
                yield f"{name} slices ({window})", f"{path.name}/{i}", _image_study(image)


def generated_cases(tmp: Path) -> Iterator[tuple[str, str, Study]]:
    """Generated non-CT images, each kind in 3 seeds x (PNG, JPEG), read by the reader."""
    sys.path.insert(0, str(REPO))
    from tests.support.nonct import KINDS, generate

    settings = get_settings()
    for kind in KINDS:
        for seed in range(3):
            for ext in ("png", "jpg"):
                path = tmp / f"{kind}-{seed}.{ext}"
                Image.fromarray(generate(kind, seed=seed)).save(path, quality=85)
                yield f"non-CT {kind}", path.name, read_study(path, settings, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=get_settings().data_dir)
    parser.add_argument("--no-generated", action="store_true")
    parser.add_argument("--show", type=int, default=3, help="refused items listed per source")
    args = parser.parse_args()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    refused: dict[str, list[str]] = defaultdict(list)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    with tempfile.TemporaryDirectory() as tmp:
        cases = list(real_cases(args.data_dir))
        if not args.no_generated:
            cases += list(generated_cases(Path(tmp)))
    for source, item, study in cases:
        verdict = assess(study)
        totals[source][0] += 1
        if not verdict.ok:
            totals[source][1] += 1
            refused[source].append(item)
            reasons[source][verdict.reason.split("(")[0].split(":")[0].strip()] += 1
    print(f"{'source':42s} {'n':>6s} {'refused':>8s} {'share':>7s}  main reasons")
    for source, (n, bad) in totals.items():
        top = "; ".join(f"{r} x{c}" for r, c in reasons[source].most_common(2))
        print(f"{source:42s} {n:6d} {bad:8d} {bad / n:7.1%}  {top}")
    for source, items in refused.items():
        if not source.startswith("non-CT") and args.show:
            print(f"  refused in {source}: {', '.join(items[: args.show])}")


if __name__ == "__main__":
    main()
