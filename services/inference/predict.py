"""Batched slice probabilities from a SliceCNN, with optional flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from services.inference.model import SliceCNN


@torch.inference_mode()
def predict_proba(
    model: SliceCNN,
    inputs: NDArray[np.uint8],
    batch_size: int = 32,
    tta: bool = True,
    device: str | torch.device = "cpu",
) -> NDArray[np.float64]:
    """inputs: (N, S, S) uint8 -> (N, 2) probabilities [NonCOVID, COVID]."""
    model.eval()
    if len(inputs) == 0:
        return np.zeros((0, 2))
    out: list[NDArray[np.float64]] = []
    for start in range(0, len(inputs), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size]))
        batch = batch.to(device).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        probs = torch.softmax(model(batch).float(), dim=1)
        if tta:
            # A lung CT is close to left-right symmetric; averaging the mirror steadies scores.
            probs = (probs + torch.softmax(model(batch.flip(-1)).float(), dim=1)) / 2
        out.append(probs.cpu().double().numpy())
    return np.concatenate(out)
