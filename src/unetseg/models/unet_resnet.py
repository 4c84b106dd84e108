"""U-Net decoder on a ResNet encoder, in the layout of segmentation_models_pytorch's ``Unet("resnet34")``."""

from __future__ import annotations

import torch
from torch import nn

from unetseg.models.blocks import UpBlock, run
from unetseg.models.resnet import ResNetEncoder


def decoder_channels(width: int) -> tuple[int, ...]:
    """Channels of the five decoder blocks (strides 16, 8, 4, 2, 1): 4w, 2w, w, w/2, w/4.

    At the default ``width`` 64 this is smp's ``decoder_channels=(256, 128, 64, 32, 16)``.
    """
    return tuple(max(1, width * 4 // 2**i) for i in range(5))


class UNetResNet(nn.Module):
    """``encoder`` (ResNet-18/34/50, torchvision names) -> five decoder blocks -> 3x3 ``head`` to class logits.

    Skip connections come from the encoder at strides 2, 4, 8 and 16; the last block up-samples to the input
    size. Any ``H, W`` works: the encoder rounds odd sizes up and each block crops to its skip connection.
    """

    def __init__(
        self, depth: int, n_channels: int, n_classes: int, width: int = 64, checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.n_channels, self.n_classes, self.width, self.checkpointing = n_channels, n_classes, width, checkpointing
        self.encoder = ResNetEncoder(depth, n_channels)
        enc = self.encoder.channels  # strides 2, 4, 8, 16, 32
        dec = decoder_channels(width)
        ins = (enc[4], *dec[:-1])
        skips = (enc[3], enc[2], enc[1], enc[0], 0)
        self.decoder = nn.ModuleList(UpBlock(i, s, o) for i, s, o in zip(ins, skips, dec))
        self.head = nn.Conv2d(dec[-1], n_classes, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, ck = self.encoder, self.checkpointing
        f1 = e.relu(e.bn1(e.conv1(x)))  # the stem, stride 2
        f2 = run(e.layer1, ck, e.maxpool(f1))
        f3 = run(e.layer2, ck, f2)
        f4 = run(e.layer3, ck, f3)
        y = run(e.layer4, ck, f4)
        for block, skip in zip(self.decoder, (f4, f3, f2, f1, x)):
            y = run(block, ck, y, skip)
        return self.head(y)
