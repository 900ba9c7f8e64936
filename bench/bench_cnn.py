"""CNN slices/s: the shipped scorer (members x flip TTA) against one plain forward pass."""

from __future__ import annotations

import numpy as np

from bench.common import best_of, report
from services.inference.predict import predict_proba
from services.inference.stage import loaded_slice_model


def main(n: int = 64) -> dict[str, float]:
    model = loaded_slice_model()
    size = model.image_size
    x = np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)
    t_plain = best_of(lambda: predict_proba(model.members[0], x, tta=False), repeats=2)
    t_shipped = best_of(lambda: model.predict_proba(x), repeats=2)
    result = {
        "single_forward_slices_per_s": n / t_plain,
        "shipped_scorer_slices_per_s": n / t_shipped,
        "ratio_shipped_vs_single_forward": t_plain / t_shipped,
    }
    return report(result)


if __name__ == "__main__":
    main()
