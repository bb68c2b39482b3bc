"""The policy network: a small CNN from a camera image to (steering, throttle).

Shared by the seed trainer in tools/, the on-device LoRA trainer and the companion, so the
safetensors weights of any of them load into any other. Layer names are stable on purpose:
LoRA targets them (`fc1`, `fc2`, `head`, `conv*`).
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_WIDTH = 80
INPUT_HEIGHT = 60
ARCH = "brain-cnn-v1"


class PolicyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 5, stride=2, padding=2)  # 60x80 -> 30x40
        self.conv2 = nn.Conv2d(24, 32, 5, stride=2, padding=2)  # -> 15x20
        self.conv3 = nn.Conv2d(32, 48, 3, stride=2, padding=1)  # -> 8x10
        self.conv4 = nn.Conv2d(48, 64, 3, stride=2, padding=1)  # -> 4x5
        self.fc1 = nn.Linear(64 * 4 * 5, 96)
        self.fc2 = nn.Linear(96, 48)
        self.head = nn.Linear(48, 2)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x 3 x 60 x 80 float in 0..1 (RGB) -> N x 2 in -1..1 (steering, throttle)."""
        x = x - 0.5
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.act(self.conv3(x))
        x = self.act(self.conv4(x))
        x = torch.flatten(x, 1)
        x = self.drop(self.act(self.fc1(x)))
        x = self.act(self.fc2(x))
        return torch.tanh(self.head(x))
