"""An ensemble of models that averages class probabilities; it returns logits of the mean, like any model."""

from __future__ import annotations

import torch
from torch import nn

from unetseg.core.meta import Norm


class Ensemble(nn.Module):
    """Members trained on different folds. Input is normalised with ``norm``; each member gets its own normalisation.

    The output is ``log(mean softmax)`` (or ``logit(mean sigmoid)`` for one-channel members), so argmax, softmax,
    thresholds and metrics treat it as the ensemble's probabilities.
    """

    def __init__(self, members: list[dict], norms: list[Norm], norm: Norm) -> None:
        super().__init__()
        from unetseg.models import create_model  # the registry imports this module

        self.specs, self.norms, self.norm = members, norms, norm
        self.members = nn.ModuleList(
            create_model(m.get("name", "unet"), **{k: v for k, v in m.items() if k != "name"}) for m in members
        )
        mean, std = torch.tensor(norm["mean"]), torch.tensor(norm["std"])
        for i, member_norm in enumerate(norms):
            # x_i = (raw / s_i - m_i) / d_i with raw / s = x * std + mean: one affine per channel and member
            ratio = float(norm["scale"]) / float(member_norm["scale"])
            m_i, d_i = torch.tensor(member_norm["mean"]), torch.tensor(member_norm["std"])
            self.register_buffer(f"gain{i}", (std * ratio / d_i).view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"bias{i}", ((mean * ratio - m_i) / d_i).view(1, -1, 1, 1), persistent=False)

    @property
    def n_channels(self) -> int:
        return self.members[0].n_channels

    @property
    def n_classes(self) -> int:
        return self.members[0].n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for i, member in enumerate(self.members):
            logits = member(x * getattr(self, f"gain{i}") + getattr(self, f"bias{i}")).float()
            probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1)
            total = probs if total is None else total + probs
        mean = (total / len(self.members)).clamp(1e-7, 1 - 1e-7)
        return torch.logit(mean) if mean.shape[1] == 1 else mean.log()
