"""Losses on logits, by name: cross-entropy (BCE for one output channel) plus a soft Dice per class, focal, Tversky.

Every loss skips pixels labelled ``IGNORE_INDEX`` and is computed in fp32 whatever the autocast dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.errors import UserError

DICE_SMOOTH = 1.0  # keeps the Dice of a class absent from the batch finite and pushes its probability to 0
FOCAL_GAMMA = 2.0  # Lin et al. 2017
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7  # weigh false negatives more: better recall of small structures

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _prepare(logits: torch.Tensor, target: torch.Tensor) -> tuple:
    """fp32 logits, a valid-pixel mask ``(B, 1, H, W)``, probabilities and one-hot targets ``(B, K, H, W)``."""
    logits = logits.float()
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    safe = torch.where(valid.squeeze(1), target, torch.zeros_like(target)).long()
    if logits.shape[1] == 1:
        return logits, valid, safe, torch.sigmoid(logits), safe.unsqueeze(1).float()
    onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float()
    return logits, valid, safe, logits.softmax(dim=1), onehot


def soft_dice_loss(probs: torch.Tensor, target_1hot: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the batch soft Dice. probs/target ``(B, K, H, W)``, valid ``(B, 1, H, W)``."""
    probs = probs * valid
    target_1hot = target_1hot * valid
    dims = (0, 2, 3)
    inter = (probs * target_1hot).sum(dims)
    denom = probs.sum(dims) + target_1hot.sum(dims)
    return 1 - ((2 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)).mean()


def tversky_loss(probs: torch.Tensor, target_1hot: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 - mean Tversky index (alpha weighs false positives, beta false negatives)."""
    probs, target_1hot = probs * valid, target_1hot * valid
    dims = (0, 2, 3)
    tp = (probs * target_1hot).sum(dims)
    fp = (probs * (1 - target_1hot)).sum(dims)
    fn = ((1 - probs) * target_1hot).sum(dims)
    return 1 - ((tp + DICE_SMOOTH) / (tp + TVERSKY_ALPHA * fp + TVERSKY_BETA * fn + DICE_SMOOTH)).mean()


def cross_entropy(logits, valid, safe, weights: torch.Tensor | None) -> torch.Tensor:
    """CE over valid pixels (BCE with one channel); ``weights`` per class."""
    if logits.shape[1] == 1:
        bce = F.binary_cross_entropy_with_logits(logits, safe.unsqueeze(1).float(), reduction="none")
        if weights is not None:
            bce = bce * weights[safe].unsqueeze(1)
        return (bce * valid).sum() / valid.sum().clamp_min(1)
    target = torch.where(valid.squeeze(1), safe, torch.full_like(safe, IGNORE_INDEX))
    return F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)


def focal(logits, valid, safe, weights: torch.Tensor | None) -> torch.Tensor:
    """Focal loss: CE scaled by (1 - p_true)^gamma, so easy pixels count less."""
    if logits.shape[1] == 1:
        logp = -F.binary_cross_entropy_with_logits(logits, safe.unsqueeze(1).float(), reduction="none")[:, 0]
    else:
        logp = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1))[:, 0]
    loss = -((1 - logp.exp()) ** FOCAL_GAMMA) * logp
    if weights is not None:
        loss = loss * weights[safe]
    valid = valid[:, 0]
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def build_loss(name: str, class_weights: torch.Tensor | None = None) -> Loss:
    """``ce``, ``ce+dice`` (default), ``focal``, ``focal+dice``, ``tversky``, ``ce+tversky``; optional class weights."""
    parts = name.split("+")
    pixel = {"ce": cross_entropy, "focal": focal}
    region = {"dice": soft_dice_loss, "tversky": tversky_loss}
    known = ["ce", "ce+dice", "focal", "focal+dice", "tversky", "ce+tversky"]
    if name not in known:
        raise UserError(f"--loss {name}: unknown loss; known: {', '.join(known)}")

    on_device: dict[torch.device, torch.Tensor] = {}  # copied once: a copy per step would sync a GPU

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, valid, safe, probs, onehot = _prepare(logits, target)
        weights = None
        if class_weights is not None:
            weights = on_device.setdefault(logits.device, class_weights.to(logits.device))
        total = logits.new_zeros(())
        for part in parts:
            if part in pixel:
                total = total + pixel[part](logits, valid, safe, weights)
            else:
                total = total + region[part](probs, onehot, valid.float())
        return total

    return loss


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """CE (softmax, K >= 2 channels) or BCE (one channel) plus ``dice_weight`` x soft Dice; 255 is ignored."""
    logits, valid, safe, probs, onehot = _prepare(logits, target)
    base = cross_entropy(logits, valid, safe, None)
    return base if dice_weight == 0 else base + dice_weight * soft_dice_loss(probs, onehot, valid.float())
