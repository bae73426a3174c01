"""A small CNN for 32x32 colour images: three conv blocks and a two-layer head.

``[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2]`` with 32, 64, 128 channels (32x32 -> 4x4), then
``Linear(128*4*4, hidden) -> ReLU -> Linear(hidden, num_classes)``. :func:`build` is the model factory
(``model.factory: cifar_cnn_demo.model:build``). No in-place activations and no dropout; the BatchNorm
layers make RT-HPO's automatic HVP route ``forward_over_reverse_bn``.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """``Conv3x3 (no bias) -> BatchNorm -> ReLU -> MaxPool 2``: halves the height and width."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """Conv blocks of ``widths`` channels, then a hidden linear layer and the class logits."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *,
                 widths: tuple[int, ...] = (32, 64, 128), hidden: int = 128) -> None:
        super().__init__()
        channels, height, width = input_shape
        blocks, c = [], channels
        for w in widths:
            blocks.append(conv_block(c, w))
            c, height, width = w, height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * height * width, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of a normalised image batch ``(N, C, H, W)``."""
        return self.head(self.features(x))


def build(input_shape: tuple[int, ...], num_classes: int, *,
          widths: tuple[int, ...] | list[int] = (32, 64, 128), hidden: int = 128) -> SmallCNN:
    """The model factory: ``input_shape`` is ``(C, H, W)`` (CIFAR-10: ``(3, 32, 32)``)."""
    if len(input_shape) != 3:
        raise ValueError(f"cifar_cnn_demo.model.build expects images, input_shape (C, H, W), but got "
                         f"{tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    return SmallCNN((c, h, w), int(num_classes), widths=tuple(int(v) for v in widths), hidden=int(hidden))
