"""A small U-Net: the encoder-decoder shape of segmentation models. Skip connections
concatenated with transposed-conv upsampling, max-pool downsampling, bilinear resizing."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 16):
        super().__init__()
        w = width
        self.down1, self.down2, self.bottom = _double_conv(in_channels, w), _double_conv(w, 2 * w), _double_conv(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _double_conv(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _double_conv(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = self.down1(x)
        skip2 = self.down2(F.max_pool2d(skip1, 2))
        y = self.bottom(F.max_pool2d(skip2, 2))
        y = self.dec2(torch.cat([self.up2(y), skip2], dim=1))
        y = self.dec1(torch.cat([self.up1(y), skip1], dim=1))
        logits = self.head(y)
        # Segmentation heads often predict at a lower resolution and resize to the input's.
        return F.interpolate(logits[:, :, ::2, ::2], size=x.shape[2:], mode="bilinear", align_corners=False)
