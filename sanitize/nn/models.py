"""Model registry: small-input classifiers with a penultimate-feature hook.

Every model is a :class:`Classifier`: a ``trunk`` mapping images to a feature vector and a
linear ``head``. Detectors need the features (CT's per-class PCA, passive baselines), so the
split is part of the contract. Architectures follow the CT paper's comparison (ResNet-18,
MobileNetV2, VGG-16, DenseNet-121) and come from torchvision, with the usual CIFAR adaptation
(3x3 stride-1 stem, no early max-pool) so 32 px inputs keep enough resolution. ``small_cnn`` is
for tiny images and CPU runs.

Register a new architecture with :func:`register_model`; build one with :func:`build_model`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

from ..errors import ParameterError

TrunkFactory = Callable[[int, int], tuple[nn.Module, int]]
_REGISTRY: dict[str, TrunkFactory] = {}


class Classifier(nn.Module):
    """``trunk`` -> features -> ``head`` -> logits."""

    def __init__(self, trunk: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.trunk(x)
        return feats, self.head(feats)


def register_model(name: str) -> Callable[[TrunkFactory], TrunkFactory]:
    """Decorator: ``factory(in_channels, image_size) -> (trunk, feature_dim)``."""

    def wrap(factory: TrunkFactory) -> TrunkFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> Classifier:
    if name not in _REGISTRY:
        raise ParameterError("arch", name, f"unknown network; choose from {', '.join(available_models())}")
    trunk, dim = _REGISTRY[name](in_channels, image_size)
    return Classifier(trunk, dim, num_classes)


def default_arch(device: torch.device, image_size: int) -> str:
    """ResNet-18 where it is affordable (a GPU and >= 32 px), else the small CNN.

    On a CPU a ResNet-18 trains at tens of images per second, which turns a few thousand images
    into hours; the small CNN keeps CT at minutes there.
    """
    return "resnet18" if device.type == "cuda" and image_size >= 32 else "small_cnn"


def _stem(in_channels: int, out_channels: int) -> nn.Conv2d:
    """The CIFAR-style stem: 3x3, stride 1, keeps small images at full resolution."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)


@register_model("resnet18")
def _resnet18(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    net = tvm.resnet18(weights=None)
    net.conv1 = _stem(in_channels, 64)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512


@register_model("mobilenet_v2")
def _mobilenet_v2(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    net = tvm.mobilenet_v2(weights=None)
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=1, padding=1, bias=False)
    net.classifier = nn.Identity()
    return net, net.last_channel


@register_model("vgg16")
def _vgg16(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    # The batch-norm variant: plain VGG-16 trains poorly from scratch with CT's constant-lr SGD.
    net = tvm.vgg16_bn(weights=None)
    first = net.features[0]
    net.features[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Flatten()
    return net, 512


@register_model("densenet121")
def _densenet121(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    net = tvm.densenet121(weights=None)
    net.features.conv0 = _stem(in_channels, net.features.conv0.out_channels)
    net.features.pool0 = nn.Identity()
    dim = net.classifier.in_features
    net.classifier = nn.Identity()
    return net, dim


@register_model("small_cnn")
def _small_cnn(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """Three conv blocks (32/64/128) with batch norm; pools only while the map is >= 4 px."""
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for width in (32, 64, 128):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        if size >= 8:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), channels
