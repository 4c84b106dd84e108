"""What the run tells the user: the start-up summary, one line per validation round, and picture panels."""

from __future__ import annotations

import math

import numpy as np
import torch

from unetseg.data.prepare import class_frequencies
from unetseg.engine.precision import autocast, normalize
from unetseg.engine.state import Run
from unetseg.metrics import predict_classes

GALLERY_SIZE = 4  # validation images shown in panels and the prediction gallery


def summary(run: Run) -> None:
    """The start-up summary of the settings, like Pytorch-UNet's."""
    cfg, data, batches = run.cfg, run.data, run.batches
    freq = class_frequencies(data.train, data.class_map.num_classes)
    classes = ", ".join(
        f"{n} (value {v}, {100 * f:.1f}%)" for n, v, f in zip(data.class_map.names, data.class_map.values, freq)
    )
    params = sum(p.numel() for p in run.model.parameters())
    world = run.dist.world
    batch = f"batch {batches.batch_size}" + (f" x {world} processes = {batches.global_batch}" if world > 1 else "")
    lines = [
        f"unetseg train -> {run.dir}",
        f"  data        {data.root}: {len(data.train)} train, {len(data.val)} validation images, "
        f"{data.channels} channel(s), scale {cfg.scale}",
        f"  classes     {classes}",
        f"  model       {cfg.model} width {cfg.width}{' bilinear' if cfg.bilinear else ''}, "
        f"{params / 1e6:.2f} M parameters, {run.model.outc.conv.out_channels} output channel(s)"
        f"{', activation checkpointing' if cfg.checkpointing else ''}",
        f"  device      {run.device}{f' (rank 0 of {world})' if world > 1 else ''}, precision "
        f"{str(run.dtype).replace('torch.', '')}{', grad scaler' if run.scaler.is_enabled() else ''}",
        f"  training    {cfg.epochs} epochs x {len(batches)} batches, {batch}"
        f"{f', {cfg.accumulate} batches per step' if cfg.accumulate > 1 else ''}, patch "
        f"{batches.patch[0]}x{batches.patch[1]}, augment {cfg.augment}",
        f"  optimizer   {cfg.optimizer} lr {cfg.learning_rate:g}{' (not scaled with processes)' if world > 1 else ''}"
        f", {cfg.scheduler} schedule, {cfg.warmup_steps} warm-up steps, loss {cfg.loss}, clip {cfg.grad_clip:g}"
        f"{f', EMA {cfg.ema}' if cfg.ema else ''}",
        f"  validation  {cfg.val_rounds} round(s) per epoch; last.pt every epoch"
        f"{f' and every {cfg.save_every} steps' if cfg.save_every else ''}",
    ]
    if run.state.step:
        lines.append(f"  resumed     at epoch {run.state.epoch + 1}, step {run.state.step}, best {run.state.best:.4f}")
    lines += [f"  note        {note}" for note in data.notes]
    for line in lines:
        run.log.info(line)


def report_round(run: Run, row: dict) -> None:
    """One console line per validation round; the row goes to every logger."""
    improved = row.pop("improved")
    panels = row.pop("panels", None)
    names = run.data.class_map.names
    per_class = " ".join(f"{n}={row.get(f'dice_{n}', math.nan):.4f}" for n in names[1:])
    run.log.info(
        f"step {row['step']:>6} epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
        f"val dice_fg {row['dice_fg']:.4f} ({per_class})  lr {row['lr']:.2e}  "
        f"{row['img_s']:.1f} img/s{'  *best' if improved else ''}"
    )
    run.log.validation(row["step"], row, run.model, panels, improved)


@torch.inference_mode()
def gallery(run: Run) -> list[dict]:
    """Image, truth and prediction for the first validation images (the same ones every round)."""
    was_training = run.model.training
    run.model.eval()
    panels = []
    for sample in run.data.val[:GALLERY_SIZE]:
        x = normalize(torch.from_numpy(np.array(sample.image))[None], run.data.norm, run.device, run.cfg.channels_last)
        with autocast(run.device, run.dtype):
            pred = predict_classes(run.model(x))[0].cpu().numpy().astype(np.uint8)
        panels.append({"name": sample.name, "image": sample.image, "truth": sample.mask, "pred": pred})
    run.model.train(was_training)
    return panels
