"""Losses on logits: cross-entropy (or BCE for one output channel) plus a soft Dice per class."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.errors import UserError

DICE_SMOOTH = 1.0  # keeps the Dice of a class absent from the batch finite and pushes its probability to 0


def soft_dice_loss(probs: torch.Tensor, target_1hot: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the batch soft Dice. probs/target ``(B, K, H, W)``, valid ``(B, 1, H, W)``."""
    probs = probs * valid
    target_1hot = target_1hot * valid
    dims = (0, 2, 3)
    inter = (probs * target_1hot).sum(dims)
    denom = probs.sum(dims) + target_1hot.sum(dims)
    return 1 - ((2 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)).mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """CE (softmax, K >= 2 channels) or BCE (one channel) plus ``dice_weight`` x soft Dice; 255 is ignored."""
    logits = logits.float()  # (B, K, H, W); the loss is computed in fp32 whatever the autocast dtype
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    safe_target = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
    if logits.shape[1] == 1:
        bce = F.binary_cross_entropy_with_logits(logits, safe_target.unsqueeze(1).float(), reduction="none")
        base = (bce * valid).sum() / valid.sum().clamp_min(1)
        probs = torch.sigmoid(logits)
        target_1hot = safe_target.unsqueeze(1).float()
    else:
        base = F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX)
        probs = logits.softmax(dim=1)
        target_1hot = F.one_hot(safe_target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    if dice_weight == 0:
        return base
    return base + dice_weight * soft_dice_loss(probs, target_1hot, valid.float())


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce+dice": ce_dice_loss,
    "ce": lambda logits, target: ce_dice_loss(logits, target, dice_weight=0.0),
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A loss by name; an unknown name lists the known ones."""
    if name not in LOSSES:
        raise UserError(f"--loss {name}: unknown loss; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]
