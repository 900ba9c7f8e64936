"""What every room may know about the shipped models without loading them (read as data)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CLASS_NAMES = ("NonCOVID", "COVID")  # index order of every probability pair
COVID_INDEX = CLASS_NAMES.index("COVID")
IMAGE_SEGMENTATIONS = ("otsu", "fov-aware")  # services.preprocess.pipeline.ImageSegmentation


@dataclass(frozen=True)
class SliceModelInfo:
    """The parts of a slice-CNN artefact's ``config.json`` that preprocessing must follow."""

    version: str
    image_size: int
    enhancement: str
    image_segmentation: str = "otsu"  # how single images are segmented (pipeline.segment_image)


def slice_model_info(model_dir: Path) -> SliceModelInfo:
    config = json.loads((model_dir / "config.json").read_text())
    classes = tuple(config.get("classes", CLASS_NAMES))
    if classes != CLASS_NAMES:
        raise ValueError(f"{model_dir} scores classes {classes}, the service expects {CLASS_NAMES}")
    segmentation = str(config["preprocess"].get("image_segmentation", "otsu"))
    if segmentation not in IMAGE_SEGMENTATIONS:
        raise ValueError(f"{model_dir}: unknown image_segmentation {segmentation!r}")
    return SliceModelInfo(
        version=config["version"],
        image_size=int(config["preprocess"]["size"]),
        enhancement=str(config["preprocess"]["enhancement"]),
        image_segmentation=segmentation,
    )
