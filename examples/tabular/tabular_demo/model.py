"""A small residual MLP for tables:
``x -> Linear -> [LayerNorm -> GELU -> Linear] x depth (+ skip) -> logits``.

:func:`build` is a model factory: ``build(input_shape, num_classes, **factory_args) -> nn.Module``.
No BatchNorm, dropout or in-place activations, so every Hessian-vector product route of RTHPO works.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """``x + Linear(GELU(LayerNorm(x)))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.act = nn.GELU()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, same shape as ``x``."""
        return x + self.linear(self.act(self.norm(x)))


class TabularNet(nn.Module):
    """Flatten, embed to ``hidden`` units, ``depth`` residual blocks, a LayerNorm and a linear head."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, hidden)
        self.blocks = nn.Sequential(*(ResidualBlock(hidden) for _ in range(depth)))
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for a batch ``(N, *input_shape)``."""
        return self.head(self.blocks(self.embed(x.flatten(1))))


def build(input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 64, depth: int = 2) -> TabularNet:
    """The model factory ``rthpo`` calls (``model.factory: tabular_demo.model:build``)."""
    return TabularNet(math.prod(input_shape), num_classes, hidden=hidden, depth=depth)
