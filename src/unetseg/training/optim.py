"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

import math

import torch
from torch import nn

from unetseg.errors import UserError

PLATEAU_PATIENCE = 5  # validation rounds without improvement before the LR drops (Pytorch-UNet's value)
PLATEAU_FACTOR = 0.1


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    momentum: float,
    device: torch.device,
    encoder_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW, Adam, SGD (Nesterov) or RMSprop.

    On GPUs the fused kernels: one launch per step, and the grad scaler's skip flag is read on the device
    instead of through a host sync. RMSprop has no fused kernel and uses foreach. With ``encoder_lr_scale`` below 1
    a model's ``encoder`` gets its own parameter group, whose ``lr_scale`` the schedule multiplies in.
    """
    params = parameter_groups(model, encoder_lr_scale)
    gpu = device.type == "cuda"
    fast = {"fused": True} if gpu else {}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fast)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fast)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay, **fast
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, momentum=momentum, foreach=gpu)
    raise UserError(f"--optimizer {name}: unknown optimizer; known: adamw, adam, sgd, rmsprop")


def parameter_groups(model: nn.Module, encoder_lr_scale: float) -> list[dict]:
    """The trainable parameters: one group, or the rest and the encoder's (at ``encoder_lr_scale``)."""
    encoder = getattr(model, "encoder", None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if encoder is None or encoder_lr_scale == 1.0:
        return [{"params": trainable, "lr_scale": 1.0}]
    inside = {id(p) for p in encoder.parameters()}
    groups = [  # the full-rate group first: param_groups[0]["lr"] is the rate the logs show
        {"params": [p for p in trainable if id(p) not in inside], "lr_scale": 1.0},
        {"params": [p for p in trainable if id(p) in inside], "lr_scale": encoder_lr_scale},
    ]
    return [g for g in groups if g["params"]]


class Schedule:
    """Linear warm-up, then cosine or poly decay to zero, a constant rate, or ReduceLROnPlateau on a score.

    The rate is a function of the step and the plateau state, so resuming restores it exactly. Under a time
    budget, decay also follows the clock, so the rate reaches zero when the budget ends (not repeatable).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, kind: str, base_lr: float, total_steps: int, warmup_steps: int
    ) -> None:
        if kind not in ("cosine", "poly", "plateau", "constant"):
            raise UserError(f"--scheduler {kind}: unknown schedule; known: cosine, poly, plateau, constant")
        self.optimizer, self.kind, self.base_lr = optimizer, kind, base_lr
        self.total_steps, self.warmup_steps = max(total_steps, 1), warmup_steps
        self.factor, self.best, self.bad_rounds = 1.0, -math.inf, 0

    def lr_at(self, step: int, time_progress: float = 0.0) -> float:
        """The rate at ``step``; ``time_progress`` (share of a time budget used) advances decay when ahead."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        progress = min(1.0, max(step / self.total_steps, time_progress))
        if self.kind == "cosine":
            return self.base_lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "poly":
            return self.base_lr * warm * (1 - progress) ** 0.9
        return self.base_lr * warm * self.factor

    def set_step(self, step: int, time_progress: float = 0.0) -> float:
        """Set the rate for optimizer step ``step`` (0-based) and return it."""
        lr = self.lr_at(step, time_progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def observe(self, score: float) -> None:
        """Feed a validation score (higher is better); only the plateau schedule uses it."""
        if self.kind != "plateau" or math.isnan(score):
            return
        if score > self.best:
            self.best, self.bad_rounds = score, 0
        else:
            self.bad_rounds += 1
            if self.bad_rounds > PLATEAU_PATIENCE:
                self.factor *= PLATEAU_FACTOR
                self.bad_rounds = 0

    def state_dict(self) -> dict:
        return {"factor": self.factor, "best": self.best, "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: dict) -> None:
        self.factor, self.best, self.bad_rounds = state["factor"], state["best"], state["bad_rounds"]
