"""Grad-CAM heatmaps for the most suspicious slices, as PNG overlays.

captum's ``LayerGradCam`` needs torch only (the ``grad-cam`` package pulls torchvision).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from captum.attr import LayerGradCam
from numpy.typing import NDArray

from services.common.modelinfo import COVID_INDEX
from services.inference.artifacts import SliceModel
from services.inference.model import SliceCNN


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


def heatmap_pngs(
    model: SliceModel,
    inputs: NDArray[np.uint8],
    p_covid: NDArray[np.float64],
    top_k: int,
    cams: dict[int, bytes] | None = None,
) -> dict[int, bytes]:
    """PNG overlays of the ``top_k`` slices with the highest P(COVID), by stack position.
    ``cams``, when given, also receives each raw map as an 8-bit grey PNG (0..255 = heat
    0..1), which the viewer lays on the slice as read."""
    order = np.argsort(-np.asarray(p_covid))[: min(top_k, len(inputs))]
    if len(order) == 0:
        return {}
    maps = gradcam(model.members[0], inputs[order])
    pngs: dict[int, bytes] = {}
    for position, heatmap in zip(order, maps, strict=True):
        ok, png = cv2.imencode(".png", overlay(inputs[position], heatmap))
        if not ok:
            raise OSError("could not encode a heatmap PNG")
        pngs[int(position)] = png.tobytes()
        if cams is not None:
            ok, cam = cv2.imencode(".png", np.rint(heatmap * 255).astype(np.uint8))
            if not ok:
                raise OSError("could not encode a Grad-CAM PNG")
            cams[int(position)] = cam.tobytes()
    return pngs
