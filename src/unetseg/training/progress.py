"""Loss, throughput and skipped steps, accumulated on the device between reads."""

from __future__ import annotations

import time

import torch


class Progress:
    """Loss and throughput accumulated on the device between reads (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()
        self.bad_total = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_streak = torch.zeros((), dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Start a new window (each validation round reports its own window)."""
        self.loss_sum = torch.zeros((), device=self.device)
        self.batches, self.images, self.tick = 0, 0, time.monotonic()

    def add(self, loss: torch.Tensor, bad: torch.Tensor | None, images: int) -> None:
        self.loss_sum += torch.nan_to_num(loss.float(), nan=0.0, posinf=0.0)
        self.batches, self.images = self.batches + 1, self.images + images
        if bad is not None:
            self.bad_total += bad
            self.bad_streak.mul_(bad).add_(bad)  # consecutive count: reset to 0 by a good step

    def read(self) -> dict:
        """Host values (one sync): mean loss and img/s since the window began."""
        return {
            "train_loss": self.loss_sum.item() / max(self.batches, 1),
            "img_s": self.images / max(time.monotonic() - self.tick, 1e-9),
        }
