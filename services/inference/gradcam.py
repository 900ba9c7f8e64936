"""Grad-CAM heatmaps for the most suspicious slices, saved as PNG overlays.

captum's ``LayerGradCam`` needs torch only (the ``grad-cam`` package pulls torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from captum.attr import LayerGradCam
from numpy.typing import NDArray

from services.inference.artifacts import SliceModel
from services.inference.model import CLASSES, SliceCNN

COVID_INDEX = CLASSES.index("COVID")


def gradcam(
    model: SliceCNN, inputs: NDArray[np.uint8], target: int = COVID_INDEX
) -> NDArray[np.float32]:
    """(N, S, S) uint8 slices -> (N, S, S) heatmaps in [0, 1] for class ``target``."""
    model.eval()
    explainer = LayerGradCam(model, model.target_layer)
    x = torch.from_numpy(np.ascontiguousarray(inputs)).float().unsqueeze(1).requires_grad_(True)
    attribution = explainer.attribute(x, target=target, relu_attributions=True)
    maps = (
        torch.nn.functional.interpolate(
            attribution, size=inputs.shape[1:], mode="bilinear", align_corners=False
        )[:, 0]
        .detach()
        .numpy()
    )
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return (maps / np.maximum(peak, 1e-8)).astype(np.float32)


def overlay(
    image: NDArray[np.uint8], heatmap: NDArray[np.float32], alpha: float = 0.4
) -> NDArray[np.uint8]:
    """BGR overlay of a [0, 1] heatmap (JET colour map) on a grey slice."""
    colour = cv2.applyColorMap((heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.asarray(cv2.addWeighted(colour, alpha, grey, 1 - alpha, 0), dtype=np.uint8)


def write_heatmaps(
    model: SliceModel,
    inputs: NDArray[np.uint8],
    slice_indices: Sequence[int],
    slice_probabilities: Sequence[float],
    out_dir: Path,
    top_k: int = 3,
) -> list[Path]:
    """Overlays for the ``top_k`` slices with the highest P(COVID), named by slice index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-np.asarray(slice_probabilities))[:top_k]
    heatmaps = gradcam(model.members[0], inputs[order])
    written = []
    for position, heatmap in zip(order, heatmaps, strict=True):
        path = out_dir / f"slice-{slice_indices[position]:04d}.png"
        if not cv2.imwrite(str(path), overlay(inputs[position], heatmap)):
            raise OSError(f"could not write {path}")
        written.append(path)
    return written
