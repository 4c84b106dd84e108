"""Building blocks the U-Net variants share: conv-BN-ReLU, a decoder stage, activation checkpointing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias: BatchNorm follows), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def crop_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` cut to ``like``'s height and width: strided convolutions round up (ceil(H / 2)), so an up-sampled
    map is at most one pixel larger than the skip connection, never smaller."""
    return x[:, :, : like.shape[2], : like.shape[3]]


def run(block: nn.Module, checkpointing: bool, *inputs: torch.Tensor) -> torch.Tensor:
    """``block(*inputs)``; with ``checkpointing`` (in training), activations are recomputed in the backward pass."""
    if checkpointing and block.training and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)


class UpBlock(nn.Module):
    """segmentation_models_pytorch's U-Net decoder block: nearest 2x up-sampling, concatenation with the skip
    connection (when there is one), then (conv 3x3 -> BN -> ReLU) x 2."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.has_skip = skip > 0
        self.conv1 = conv_bn_relu(cin + skip, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # ``skip`` is the skip connection, or (for the last block) the input image, which gives only the size
        x = crop_to(F.interpolate(x, scale_factor=2.0, mode="nearest"), skip)
        if self.has_skip:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))
