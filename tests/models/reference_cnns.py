"""ResNet-18, ResNet-50 and MobileNetV2 at their published ImageNet shapes, with random weights.

torchvision cannot be installed here, so the three architectures are written out following
torchvision's definitions (``torchvision/models/resnet.py``: BasicBlock/Bottleneck with the
stride on the 3x3 conv, "ResNet v1.5"; ``torchvision/models/mobilenetv2.py``: width 1.0,
inverted-residual settings ``t, c, n, s`` below, ReLU6, last channel 1280). Weights are random
(a fixed seed): the cost model only needs shapes. Reference counts at 1x3x224x224, used by the
tests as exact checks: ResNet-18 1,814,073,344 MACs (torchvision lists 1.81 GFLOPS, i.e.
GMACs), ResNet-50 4,089,184,256 (4.09), MobileNetV2 300,774,272 (0.30), of which the
classifier ``Linear`` is 512,000 / 2,048,000 / 1,280,000.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tests.models import zoo

__all__ = ["resnet18", "resnet50", "mobilenet_v2", "REFERENCE_CNNS", "build_reference",
           "IMAGE_SHAPE"]

#: the standard ImageNet input (batch 1)
IMAGE_SHAPE = (1, 3, 224, 224)


class BasicBlock(zoo.BasicBlock):
    """ResNet-18/34 block: two 3x3 convs (the zoo's block, output width = ``width``)."""

    expansion = 1


class Bottleneck(nn.Module):
    """ResNet-50 block: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(y + skip)


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, global pool, FC."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Module] = []
        cin = 64
        for i, n in enumerate(layers):
            width = 64 << i
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_bn_relu6(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=False))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped at t=1), 3x3 depthwise, linear 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1, 1))
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 at width 1.0 (dropout is an identity at inference)."""

    #: expansion t, output channels c, repeats n, first stride s
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu6(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def resnet18() -> nn.Module:
    """ResNet-18 (BasicBlock x [2, 2, 2, 2])."""
    return ResNet(BasicBlock, [2, 2, 2, 2])


def resnet50() -> nn.Module:
    """ResNet-50 (Bottleneck x [3, 4, 6, 3])."""
    return ResNet(Bottleneck, [3, 4, 6, 3])


def mobilenet_v2() -> nn.Module:
    """MobileNetV2, width 1.0."""
    return MobileNetV2()


#: name -> constructor
REFERENCE_CNNS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2,
}


def build_reference(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(module.eval(), (image,))`` for ``name`` with seeded random weights and input."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = REFERENCE_CNNS[name]().eval()
        x = torch.randn(*IMAGE_SHAPE)
    return model, (x,)
