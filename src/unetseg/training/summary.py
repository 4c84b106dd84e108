"""What the run tells the user: the start-up summary, one line per validation round, and picture panels."""

from __future__ import annotations

import contextlib
import math
import platform
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from unetseg.config import to_dict
from unetseg.data.prepare import Dataset, class_frequencies
from unetseg.evaluation.choice import ScoreChoice
from unetseg.evaluation.panels import predict_panels
from unetseg.tracking.runlog import RunLog
from unetseg.training.state import Hardware, Run, TrainState

GALLERY_SIZE = 4  # validation images shown in panels and the prediction gallery


def device_name(device: torch.device) -> str:
    """The hardware behind ``device``: GPU model and memory, or CPU model and threads."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    if device.type == "cpu":
        model = ""
        with contextlib.suppress(OSError):
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
        return f"{model or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return device.type


def summary(run: Run) -> None:
    """The start-up summary of the settings, like Pytorch-UNet's; opens the run's loggers."""
    cfg, data, batches, learner, hw, out = run.cfg, run.feed.data, run.feed.batches, run.learner, run.hw, run.out
    freq = class_frequencies(data.train, data.class_map.num_classes)
    classes = ", ".join(
        f"{n} (value {v}, {100 * f:.1f}%)" for n, v, f in zip(data.class_map.names, data.class_map.values, freq)
    )
    params = sum(p.numel() for p in learner.model.parameters())
    size_mb = sum(p.numel() * p.element_size() for p in learner.model.parameters()) / 1e6
    world = hw.dist.world
    batch = f"batch {batches.batch_size}" + (f" x {world} processes = {batches.global_batch}" if world > 1 else "")
    hardware = device_name(hw.device)
    choice = run.choice
    lines = [
        f"unetseg train -> {out.dir}",
        f"  data        {data.root}: {len(data.train)} train, {len(data.val)} validation images, "
        f"{data.channels} channel(s), scale {cfg.scale}",
        f"  classes     {classes}",
        f"  model       {cfg.model} width {cfg.width}{' bilinear' if cfg.bilinear else ''}, "
        f"{params / 1e6:.2f} M parameters ({size_mb:.1f} MB), {learner.model.n_classes} output channel(s)"
        f"{', activation checkpointing' if cfg.checkpointing else ''}",
        *(
            [
                f"  encoder     pretrained: {learner.pretrained}; input normalised with ImageNet's mean "
                f"{data.norm['mean']} and std {data.norm['std']} (values / {data.norm['scale']:g} first)"
            ]
            if learner.pretrained
            else []
        ),
        f"  device      {hw.device} ({hardware}){f', rank 0 of {world}' if world > 1 else ''}, precision "
        f"{str(hw.dtype).replace('torch.', '')}{', grad scaler' if learner.scaler.is_enabled() else ''}",
        f"  training    {cfg.epochs} epochs x {len(batches)} batches"
        f"{f' or {cfg.time_budget}, whichever ends first' if cfg.time_budget else ''}, {batch}"
        f"{f', {cfg.accumulate} batches per step' if cfg.accumulate > 1 else ''}, patch "
        f"{batches.patch[0]}x{batches.patch[1]}, augment {cfg.augment}",
        f"  optimizer   {cfg.optimizer} lr {cfg.learning_rate:g}{' (not scaled with processes)' if world > 1 else ''}"
        f"{f' (encoder {cfg.encoder_lr_scale:g}x)' if len(learner.optimizer.param_groups) > 1 else ''}"
        f", {cfg.scheduler} schedule, {cfg.warmup_steps} warm-up steps, loss {cfg.loss}, clip {cfg.grad_clip:g}"
        f"{f', EMA {cfg.ema}' if cfg.ema else ''}",
        f"  validation  {cfg.val_rounds} round(s) per epoch"
        f"{f', every {cfg.val_every} epochs' if cfg.val_every > 1 else ''}; last.pt every epoch"
        f"{f' and every {cfg.save_every} steps' if cfg.save_every else ''}; best.pt by "
        f"{choice.name} ({choice.reason})",
        f"  logging     {out.log.describe()}; plots in {out.dir / 'plots'}",
    ]
    state = run.state
    if state.step:
        lines.append(f"  resumed     at epoch {state.epoch + 1}, step {state.step}, best {state.best:.4f}")
    lines += [f"  note        {note}" for note in [*out.notes, *data.notes]]
    fields = summary_fields(run, freq, params, size_mb, hardware)
    out.log.start(lines, fields, data.class_map, to_dict(cfg))


def summary_fields(run: Run, freq: list[float], params: int, size_mb: float, hardware: str) -> dict:
    """The start-up summary as data (the ``start`` event of ``--log-format json``)."""
    data, cfg, batches, hw = run.feed.data, run.cfg, run.feed.batches, run.hw
    return {
        "run_dir": str(run.out.dir),
        "data": str(data.root),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "channels": data.channels,
        "classes": [
            {"name": n, "value": v, "share": float(f)}
            for n, v, f in zip(data.class_map.names, data.class_map.values, freq)
        ],
        "parameters": params,
        "model_mb": size_mb,
        "device": str(hw.device),
        "hardware": hardware,
        "processes": hw.dist.world,
        "precision": str(hw.dtype).replace("torch.", ""),
        "epochs": cfg.epochs,
        "batches_per_epoch": len(batches),
        "global_batch": batches.global_batch,
        "start_step": run.state.step,
        "notes": list(data.notes),
        "score": run.choice.describe(),
    }


def report_round(log: RunLog, choice: ScoreChoice, names: Sequence[str], model: nn.Module, row: dict) -> None:
    """One console line per validation round; the row goes to every logger."""
    improved, below = row.pop("improved"), row.pop("below_peak", None)
    mark = "" if not improved else "  *best" if below is None else f"  *best (within the noise of the peak {below:.4f})"
    panels, confusion = row.pop("panels", None), row.pop("confusion", None)
    shown = names if choice.kind == "all" else names[1:]
    per_class = " ".join(f"{n}={row.get(f'dice_{n}', math.nan):.4f}" for n in shown)
    line = (
        f"step {row['step']:>6} epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
        f"val {choice.name} {row[choice.name]:.4f} ({per_class})  lr {row['lr']:.2e}  "
        f"{row['img_s']:.1f} img/s{mark}"
    )
    log.validation(row["step"], row, model, panels, improved, message=line, confusion=confusion)


def report_end(log: RunLog, state: TrainState, score: str, reason: str, code: int, best: Path) -> None:
    """The final summary: best ``score``, its checkpoint and the command to predict with it.

    The last line says why the run ended: the ``done`` line, or for a failure the error (on stderr).
    """
    if state.skipped_steps:
        log.warn(f"{state.skipped_steps} steps were skipped for a non-finite loss or gradient")
    predict = f"unetseg predict -m {best} -i IMAGES -o OUT"
    if state.best_step >= 0:
        lines = [f"  best model  {best}", f"  predict     {predict}"]
    else:
        lines = ["  best model  none: no validation round had finite weights"]
    headline = f"done ({reason}): best validation {score} {state.best:.4f} at step {state.best_step}"
    fields = {"reason": reason, "exit_code": code, f"best_{score}": state.best, "best_step": state.best_step}
    fields |= {"best_checkpoint": str(best) if state.best_step >= 0 else None, "predict": predict}
    fields |= {"steps": state.step, "elapsed_s": state.elapsed}
    log.event("done", lines + ([f"{headline}, {state.elapsed:.0f} s"] if code == 0 else []), fields)
    if code:
        log.error(reason)


def gallery(model: nn.Module, data: Dataset, hw: Hardware, channels_last: bool) -> list[dict]:
    """Image, truth and prediction for the first validation images (the same ones every round)."""
    samples = data.val[:GALLERY_SIZE]
    return predict_panels(model, samples, data.norm, hw.device, hw.dtype, channels_last)
