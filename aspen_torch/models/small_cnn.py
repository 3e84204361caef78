"""A small CNN touching every CNN rule: strided, dilated, grouped and depthwise convs,
BN (folded and standalone), each activation, max/avg pooling, channel concat, residual add."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=4)
        self.pw = nn.Conv2d(48, 32, 1)
        self.bn_alone = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn(self.stem(x)))
        y = F.hardswish(self.dw(x))
        z = F.silu(self.grouped(x))
        x = torch.cat([y, z], dim=1)
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        x = torch.sigmoid(self.pw(x)) * x[:, :32] + x[:, 16:]
        x = F.avg_pool2d(self.bn_alone(x), 2)
        x = x.mean(dim=(2, 3))
        return self.fc(torch.tanh(x))
