"""A small ResNet-style image classifier (this file travels inside cnn.mar).

Shapes: [N, 3, H, W] float (normalised) -> [N, num_classes] logits. The last
residual block is `model.features[-1]`; its activations [N, C, H/4, W/4] (with
the default strides) are what the activation heatmap averages over channels.
The last block keeps stride 1 so the heatmap is fine enough to point inside
small objects.

Example: ``SmallResNet(num_classes=4)(torch.zeros(1, 3, 64, 64)).shape == (1, 4)``
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with a skip; stride 2 halves the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.skip(x))


class SmallResNet(nn.Module):
    """Stem conv, residual stages (stride-2 downsampling), global pooling, dropout, linear head.

    Each image is first standardised by its own mean and std: shapes of any colour on any
    background then look alike to the stem, which makes training converge several times faster.
    """

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] | list[int] = (16, 32, 64, 96),
        strides: tuple[int, ...] | list[int] = (2, 2, 1),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        widths = list(widths)
        if len(strides) != len(widths) - 1:
            raise ValueError(f"need one stride per block: {len(widths) - 1}, got {len(strides)}")
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
            )
        ]
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides, strict=True):
            layers.append(ResidualBlock(c_in, c_out, stride=stride))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (std + 1e-3)
        return self.classify(self.features(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the last block's activations: what `forward` does after `features`.

        Grad-CAM differentiates only this tail, on the activations the prediction's own
        forward pass captured, instead of running the whole network again.
        """
        return self.head(self.dropout(self.pool(features).flatten(1)))
