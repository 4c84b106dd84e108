"""A residual-encoder U-Net in the spirit of nnU-Net's ResEnc presets (Isensee et al. 2024).

Encoder: ``depth`` stages of residual blocks; every stage but the first starts with a stride-2 block, and the
channels double per stage up to 16x ``width`` (nnU-Net 2-D: 32 ... 512). Decoder: plain, one transposed
convolution and one conv-BN-ReLU per stage, as ResEnc's decoder. nnU-Net normalises with InstanceNorm and
LeakyReLU; this uses BatchNorm and ReLU like the other models here, so SyncBatchNorm and batch statistics behave
the same for every model.
"""

from __future__ import annotations

import torch
from torch import nn

from unetseg.models.blocks import conv_bn_relu, crop_to, run

# nnU-Net ResEnc M's blocks per encoder stage (2-D, six stages); deeper stages repeat the last entry.
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6)


def default_blocks(depth: int) -> list[int]:
    return [RESENC_BLOCKS[min(i, len(RESENC_BLOCKS) - 1)] for i in range(depth)]


class ResBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, plus the input, then ReLU. Where the shape changes the input goes through 2x2
    average pooling and a 1x1 conv + BN (nnU-Net's ``BasicBlockD``, "ResNet-D"): no pixel is skipped, as a
    strided 1x1 convolution would. ``ceil_mode`` pools odd sizes to ceil(H / 2), as the strided 3x3 conv does."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        if stride == 1 and cin == cout:
            self.skip = nn.Identity()
        else:
            pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
            self.skip = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.skip(x))


class Up(nn.Module):
    """Transposed 2x2 convolution to the skip connection's channels, crop, concatenate, conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = conv_bn_relu(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, crop_to(self.up(x), skip)], dim=1))


class ResUNet(nn.Module):
    """Residual encoder, plain decoder; logits ``(B, n_classes, H, W)`` for any ``H, W`` (odd sizes round up in
    the encoder and are cropped in the decoder). ``blocks[i]`` residual blocks in encoder stage ``i``."""

    def __init__(
        self,
        n_channels: int,
        n_classes: int,
        width: int = 32,
        depth: int = 6,
        blocks: list[int] | None = None,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        blocks = list(blocks) if blocks is not None else default_blocks(depth)
        self.n_channels, self.n_classes, self.width, self.depth = n_channels, n_classes, width, depth
        self.blocks, self.checkpointing = blocks, checkpointing
        chans = [min(width * 2**i, width * 16) for i in range(depth)]
        self.stem = conv_bn_relu(n_channels, width)
        self.encoder = nn.ModuleList()
        cin = width
        for i, (cout, n) in enumerate(zip(chans, blocks)):
            stage = [ResBlock(cin, cout, 1 if i == 0 else 2)] + [ResBlock(cout, cout) for _ in range(n - 1)]
            self.encoder.append(nn.Sequential(*stage))
            cin = cout
        self.decoder = nn.ModuleList(Up(chans[i + 1], chans[i]) for i in reversed(range(depth - 1)))
        self.head = nn.Conv2d(width, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = run(stage, self.checkpointing, x)
            skips.append(x)
        for up, skip in zip(self.decoder, reversed(skips[:-1])):
            x = run(up, self.checkpointing, x, skip)
        return self.head(x)
