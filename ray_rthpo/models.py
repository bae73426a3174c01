"""The paper's networks: the MLP 784-512-256-10, LeNet-5 and the CIFAR ResNet-18.

All three are built by :func:`build_model` for inputs of shape ``(C, H, W)`` and work with the
``torch.func`` transforms the hypergradient code uses (``functional_call``, ``grad``, ``jvp``):
no in-place operations on activations (``nn.ReLU()`` without ``inplace``, ``out = out + shortcut``),
no dropout. Only the ResNet has BatchNorm (see :func:`has_batchnorm`); in training mode BatchNorm
updates its running buffers in place, the one mutation left. Under ``torch.func.grad`` that works
only when the buffers are *arguments* of the transformed function
(``functional_call(model, (params, buffers), x)``), not captured; forward-over-reverse
(``jvp(grad(...))``) of a BatchNorm model in training mode fails in torch 2.x (the in-place
``num_batches_tracked.add_`` on a captured tensor, or an integer primal if passed in), so use
double backward for the Hessian-vector products of BatchNorm models.

Weights use PyTorch's default initialisation; nothing is seeded here, so the caller's
``torch.manual_seed`` makes the initial weights reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ray_rthpo.config import MODELS, ModelConfig
from ray_rthpo.errors import ConfigError
from ray_rthpo.hypergrad.hvp import has_batchnorm  # the one definition; re-exported here


def _mlp(input_shape: tuple[int, ...], hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Flatten -> (Linear -> ReLU) per hidden width -> Linear to ``num_classes``."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _pool_kernel(size: int) -> int:
    """Kernel of a 2x2 max-pool along one axis; 1 (no pooling) when that axis has size 1."""
    return 2 if size >= 2 else 1


class LeNet(nn.Module):
    """LeNet-5 (LeCun et al., 1998) for any ``(C, H, W)`` input, with ReLU and max-pooling.

    ``conv(C->6, 5x5, pad 2) -> ReLU -> maxpool 2 -> conv(6->16, 5x5) -> ReLU -> maxpool 2 ->
    fc 120 -> ReLU -> fc 84 -> ReLU -> fc num_classes``. On 28x28 inputs this is the classic
    28 -> 14 -> 10 -> 5 (16*5*5 = 400 features); on 32x32 it is 32 -> 16 -> 12 -> 6.

    Small inputs: when an axis of the first pool's output is shorter than 5, the second conv gets
    zero padding ``ceil((5 - size) / 2)`` on that axis so its output is at least 1 long (sklearn
    digits 8x8: 8 -> 4 -> pad 1 -> 2 -> 1). A max-pool along an axis of length 1 uses kernel 1
    (i.e. it does nothing) instead of producing an empty tensor. The flatten size is measured by a
    dummy forward pass at build time.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        # conv1 with padding 2 keeps H x W; then the first pool.
        pool1 = tuple(_pool_kernel(s) for s in (height, width))
        after1 = (height // pool1[0], width // pool1[1])
        pad2 = tuple(max(0, math.ceil((5 - s) / 2)) for s in after1)
        after2 = tuple(s + 2 * p - 4 for s, p in zip(after1, pad2, strict=True))
        pool2 = tuple(_pool_kernel(s) for s in after2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(pool1),
            nn.Conv2d(6, 16, kernel_size=5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(pool2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, channels, height, width)).shape[1]
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)`` for a batch ``(N, C, H, W)``."""
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers with an identity or 1x1 conv-BN shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, without in-place ops."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18 for small images (He et al., 2016; the pytorch-cifar variant by Kuang Liu).

    3x3 stride-1 conv stem with 64 channels, BatchNorm, ReLU and *no* max-pool, then four stages
    of two :class:`BasicBlock` each (64, 128, 256, 512 channels; strides 1, 2, 2, 2), adaptive
    average pooling to 1x1 (so 8x8 inputs work too) and a linear classifier. 11,173,962
    parameters for 3x32x32 inputs and 10 classes.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        in_planes = 64
        stages = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)`` for a batch ``(N, C, H, W)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.flatten(self.pool(out)))


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the network ``cfg.name`` (mlp | lenet | resnet18) for inputs of shape ``(C, H, W)``, or the
    user's own with ``cfg.factory`` (:func:`ray_rthpo.factories.build_user_model`).

    The MLP uses ``cfg.hidden`` as its hidden widths (the paper: 512, 256) and flattens inputs of any
    shape (a user's tabular data, say); LeNet and ResNet-18 ignore ``hidden`` and need ``(C, H, W)``.
    Raises :class:`~ray_rthpo.errors.ConfigError` for an unknown name, a shape with a size below 1 (or
    not ``(C, H, W)`` for LeNet and ResNet-18), or fewer than 1 class.
    """
    if getattr(cfg, "factory", None) is not None:
        from ray_rthpo.factories import build_user_model

        return build_user_model(cfg, tuple(int(s) for s in input_shape), num_classes)
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name must be one of {', '.join(MODELS)}, but got {cfg.name!r}.")
    shape = tuple(int(s) for s in input_shape)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, but got {num_classes!r}.")
    if cfg.name == "mlp" and len(shape) >= 1 and all(s >= 1 for s in shape):
        return _mlp(shape, tuple(cfg.hidden), num_classes)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ConfigError("input_shape must be (C, H, W) with positive sizes for model.name "
                          f"{cfg.name}, but got {tuple(input_shape)!r}; use model.name mlp or a "
                          "model.factory for other inputs.")
    chw = (shape[0], shape[1], shape[2])
    if cfg.name == "lenet":
        return LeNet(chw, num_classes)
    return ResNet18(chw[0], num_classes)


__all__ = ["build_model", "has_batchnorm", "LeNet", "ResNet18", "BasicBlock"]
