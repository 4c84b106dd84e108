"""ResNet encoders (He et al. 2015) with torchvision's module names, so its (and timm's) ImageNet weights load.

The layout is torchvision's ``resnet.py``: ``conv1`` (7x7, stride 2), ``bn1``, ``relu``, ``maxpool`` (3x3,
stride 2), then ``layer1`` .. ``layer4`` of ``BasicBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50, stride in
the 3x3 convolution: "ResNet v1.5") with ``downsample.0`` (1x1 conv) and ``downsample.1`` (BN) where the shape
changes. There is no ``avgpool``/``fc``: a segmentation encoder returns the feature maps at strides 2, 4, 8, 16, 32.
timm's ResNets use the same parameter names (its ``act1``/``aa``/``se`` members hold no weights).
"""

from __future__ import annotations

import torch
from torch import nn

from unetseg.core.meta import Norm


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and the identity (or a 1x1 projection) added before the last ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, plus the identity or a projection."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


# depth -> (block, blocks per stage), as torchvision's resnet18/34/50
RESNETS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}
# torchvision's IMAGENET1K_V1 weights; the 8 hex digits in the name are the start of the file's SHA-256, which
# torch.hub checks (check_hash=True).
WEIGHT_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNetEncoder(nn.Module):
    """ResNet-18/34/50 without the classifier; ``forward`` returns the maps at strides 2, 4, 8, 16, 32.

    ``in_channels`` other than 3 only change ``conv1``; :func:`adapt_first_conv` maps RGB weights onto it.
    """

    def __init__(self, depth: int, in_channels: int = 3) -> None:
        super().__init__()
        block, layers = RESNETS[depth]
        self.depth, self.in_channels = depth, in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._cin = 64
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.channels = (64, *(p * block.expansion for p in (64, 128, 256, 512)))  # at strides 2 .. 32
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self._cin, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self._cin, planes, stride, downsample)]
        self._cin = planes * block.expansion
        layers += [block(self._cin, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB kernels ``(64, 3, k, k)`` for ``in_channels`` inputs, as segmentation_models_pytorch adapts them.

    1 channel: the sum over RGB (a grey image through the RGB filters). 3: unchanged. 2 or 4+: RGB repeated
    cyclically and scaled by ``3 / in_channels`` so the response to an image keeps its magnitude.
    """
    if in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    index = torch.arange(in_channels) % 3
    return weight[:, index] * (3 / in_channels)


def imagenet_norm(channels: int, scale: float) -> Norm:
    """ImageNet's mean/std per input channel, matching :func:`adapt_first_conv` (grey: the RGB averages)."""
    if channels == 1:
        return {"scale": scale, "mean": [round(sum(IMAGENET_MEAN) / 3, 6)], "std": [round(sum(IMAGENET_STD) / 3, 6)]}
    return {
        "scale": scale,
        "mean": [IMAGENET_MEAN[i % 3] for i in range(channels)],
        "std": [IMAGENET_STD[i % 3] for i in range(channels)],
    }
