"""The training loop: build -> (resume) -> epochs of steps with validation rounds -> checkpoints.

``fit`` only sequences; each stage is a named helper. Every ending of a run (finished, a stopping rule, a signal,
divergence, out of memory, a full disk, an internal error) goes through ``finish``, so that train.log's last line
says why the run ended.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from unetseg.config import TrainConfig, parse_duration, to_dict
from unetseg.core import distributed
from unetseg.core.atomic import storage_error, write_atomic
from unetseg.core.device import autocast, choose_dtype, resolve_device, standardize, to_unit
from unetseg.data.augment import augment_batch, get_spec
from unetseg.data.prepare import prepare_for
from unetseg.data.sampler import TrainBatches, prefetch
from unetseg.errors import UserError
from unetseg.evaluation.choice import choose_score, is_better, round_scores
from unetseg.evaluation.scoring import device_batches, evaluate
from unetseg.models.resnet import imagenet_norm
from unetseg.tracking.runlog import RunLog
from unetseg.training.build import build_model, class_weights, patch_shape, seed_everything
from unetseg.training.ema import EMA
from unetseg.training.ending import finish, out_of_memory, unexpected
from unetseg.training.losses import build_loss
from unetseg.training.optim import Schedule, build_optimizer
from unetseg.training.progress import Progress
from unetseg.training.rundir import default_run_dir, open_run_dir
from unetseg.training.signals import StopSignal
from unetseg.training.state import Run, RunningStats, StopTraining, diverged, restore, save, weights_finite
from unetseg.training.summary import gallery, report_round, summary

__all__ = ["Progress", "StopTraining", "build_run", "finish", "fit", "train_step", "validation_points"]


def build_run(cfg: TrainConfig, resume: dict | None) -> Run:
    """Data, model, optimizer, schedule and state, restored from ``resume`` when given.

    The run directory is created, checked writable and locked first (rank 0), before any data is read.
    """
    device = resolve_device(cfg.device)
    info = distributed.init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir()
    lock, notes = open_run_dir(run_dir, resume is not None, cfg.overwrite) if info.is_main else (None, [])
    try:
        run = assemble(cfg, resume, run_dir, device, info)
    except BaseException:
        if lock:
            lock.release()
        raise
    run.lock, run.notes = lock, notes
    return run


def assemble(
    cfg: TrainConfig, resume: dict | None, run_dir: Path, device: torch.device, info: distributed.DistInfo
) -> Run:
    """Everything but the run directory: log, data, model, optimizer, schedule, scaler, EMA; the resumed state."""
    log = RunLog(run_dir if info.is_main else None, cfg.quiet or not info.is_main, cfg.logger, cfg.log_format)
    if info.is_main:
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    seed_everything(cfg.seed, cfg.deterministic, device)
    with distributed.main_first(info):  # one process scans and builds the data cache; the others then read it
        data = prepare_for(cfg, fold=(cfg.fold, cfg.folds) if cfg.folds and cfg.fold is not None else None)
    if resume is not None:
        data.norm = resume["norm"]  # the original run's statistics, whatever the data says now
    model, pretrained = build_model(cfg, data, device, info, resumed=resume is not None)
    if pretrained:  # the encoder learnt on ImageNet-normalised images: feed it the same statistics
        data.norm = imagenet_norm(data.channels, data.norm["scale"])
    net = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled
        else model
    )
    compiled = bool(cfg.compile or (cfg.compile is None and device.type == "cuda"))
    if compiled:
        net = torch.compile(net)
    optimizer = build_optimizer(
        cfg.optimizer, model, cfg.learning_rate, cfg.weight_decay, cfg.momentum, device, cfg.encoder_lr_scale
    )
    batches = TrainBatches(
        data.train, cfg.batch_size, patch_shape(cfg, data), cfg.seed, info.rank, info.world, cfg.foreground_crops
    )
    schedule = Schedule(
        optimizer,
        cfg.scheduler,
        cfg.learning_rate,
        cfg.max_steps or cfg.epochs * steps_per_epoch(len(batches), cfg.accumulate),
        cfg.warmup_steps,
    )
    dtype = choose_dtype(cfg.precision, cfg.amp, device)
    # On GPUs the scaler also skips non-finite steps without a host sync (fused optimizers read its flag).
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 or device.type == "cuda")
    ema = EMA(model, cfg.ema) if cfg.ema else None
    run = Run(cfg, run_dir, log, data, model, net, optimizer, schedule, scaler, batches, device, dtype, info, ema)
    run.compile_pending = compiled
    run.pretrained = pretrained
    run.augment = get_spec(cfg.augment, cfg.flips)
    run.loss_fn = build_loss(cfg.loss, class_weights(cfg.class_weights, data))
    run.stats = RunningStats(model)
    run.budget_s = parse_duration(cfg.time_budget) if cfg.time_budget else None
    if resume is not None:
        restore(run, resume)
        log.truncate_after(run.state.step)
        choice = choose_score(data.class_map, cfg.score)
        if resume.get("score", {}).get("name", "dice_fg") != choice.name:  # the best so far was another score
            run.state.best, run.state.rounds_since_best = -math.inf, 0
    return run


def steps_per_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of ``batches`` batches (the last group may be shorter)."""
    return math.ceil(batches / accumulate)


def train_step(run: Run, images: torch.Tensor, masks: torch.Tensor, group: int, last: bool) -> tuple:
    """Forward and backward one batch; on the last batch of an accumulation group, the optimizer step.

    Returns (loss, bad) as device tensors; ``bad`` is None between optimizer steps.
    """
    cfg, state = run.cfg, run.state
    if state.batch % cfg.accumulate == 0:
        # Cleared here, not after the step: the last step's gradients stay readable for the histograms that
        # loggers draw at validation rounds, at no cost (they are freed before this forward, as before).
        run.optimizer.zero_grad(set_to_none=True)
        run.stats.save()
    x = to_unit(images, run.data.norm, run.device)
    y = masks.to(run.device, non_blocking=True).long()
    if run.augment is not None:
        seed = cfg.seed * 1_000_003 + state.epoch * 100_003 + state.batch
        offset = run.dist.rank * run.batches.batch_size
        x, y = augment_batch(x, y, seed, offset, run.batches.global_batch, run.augment)
    x = standardize(x, run.data.norm, cfg.channels_last)
    ddp = getattr(run.net, "_orig_mod", run.net)  # torch.compile wraps the DDP module
    sync = last or not isinstance(ddp, DistributedDataParallel)
    with ddp.no_sync() if not sync else contextlib.nullcontext(), autocast(run.device, run.dtype):
        logits = run.net(x)
        loss = run.loss_fn(logits, y)
    run.scaler.scale(loss / group).backward()
    if not last:
        return loss.detach(), None
    run.schedule.set_step(state.step, run.elapsed() / run.budget_s if run.budget_s else 0.0)
    run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    bad = ~torch.isfinite(norm)
    if run.scaler.is_enabled():
        run.scaler.step(run.optimizer)  # skips non-finite steps itself
        run.scaler.update()
    elif not bad.item():  # host sync; only on the CPU path, where it costs nothing
        run.optimizer.step()
    run.stats.restore_if(bad)  # a skipped step leaves BatchNorm's statistics as they were too
    if run.ema:
        run.ema.update(run.model)
    state.step += 1
    return loss.detach(), bad


def compiled_step(run: Run, images: torch.Tensor, masks: torch.Tensor, group: int, last: bool) -> tuple:
    """The first compiled step compiles: time it, and fall back to eager mode if compilation fails."""
    started = time.monotonic()
    try:
        result = train_step(run, images, masks, group, last)
    except torch.OutOfMemoryError:
        raise  # not a compiler failure: eager mode would run out of memory too
    except Exception as err:  # inductor/dynamo failures come in many types
        run.log.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); continuing without it")
        run.net, run.compile_pending = run.net._orig_mod, False
        run.optimizer.zero_grad(set_to_none=True)
        return train_step(run, images, masks, group, last)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    run.log.info(f"  compile     first step with torch.compile took {time.monotonic() - started:.1f} s")
    run.compile_pending = False
    return result


def validation_points(batches: int, rounds: int, accumulate: int = 1) -> set[int]:
    """Batch indices after which to validate: ``rounds`` evenly spaced optimizer steps, always the epoch's last.

    Points are placed on steps, not batches, so that each ends an accumulation group (a round runs only after an
    optimizer step): ``rounds`` rounds run whenever the epoch has that many steps, and at least one always does.
    """
    steps = steps_per_epoch(batches, accumulate)
    rounds = max(1, min(rounds, steps))
    chosen = {round((k + 1) * steps / rounds) - 1 for k in range(rounds)}  # step indices within the epoch
    return {min((step + 1) * accumulate, batches) - 1 for step in chosen}


def validate(run: Run) -> dict:
    """One validation round on every rank (images sharded); returns the row, with the best checkpoint saved."""
    cfg, state = run.cfg, run.state
    started = time.monotonic()
    with run.ema.applied(run.model) if run.ema else contextlib.nullcontext():
        if run.val_batches is None and run.device.type == "cuda":
            run.val_batches = device_batches(run.data.val, cfg.val_batch_size, run.device, run.dist) or []
        result = evaluate(
            run.model,
            run.data.val,
            run.data.norm,
            run.data.class_map.num_classes,
            run.device,
            run.dtype,
            cfg.val_batch_size,
            cfg.channels_last,
            dist_info=run.dist,
            batches=run.val_batches or None,
            loss_fn=run.loss_fn,
        )
        choice = choose_score(run.data.class_map, cfg.score)
        score = choice.value(result)  # foreground Dice, or mIoU when class 0 is a real class
        if not weights_finite(run):  # whatever the score says, such a model is never the best
            raise diverged(run, f"the weights became non-finite by step {state.step} (not saved)")
        run.schedule.observe(score)
        improved = is_better(score, state.best)
        state.rounds_since_best = 0 if improved else state.rounds_since_best + 1
        if improved:
            state.best, state.best_step = score, state.step
            save(run, "best.pt", with_train_state=False)
        panels = gallery(run) if run.dist.is_main and (improved or run.log.wants_images) else None
    names = run.data.class_map.names
    row = {
        "step": state.step,
        "epoch": state.epoch + 1,
        "lr": run.optimizer.param_groups[0]["lr"],
        **round_scores(result, choice),
        "val_loss": result["loss"],
    }
    row |= {f"dice_{n}": d for n, d in zip(names, result["dice"])}
    row |= {f"iou_{n}": d for n, d in zip(names, result["iou"])}
    run.val_cost = time.monotonic() - started
    row |= {"val_s": run.val_cost, "elapsed_s": run.elapsed()}
    confusion = result["confusion"] if run.dist.is_main else None  # for report.html (not a metrics.csv column)
    return row | {"best": state.best, "improved": improved, "panels": panels, "confusion": confusion}


def check_limits(run: Run, stop: StopSignal, progress: Progress, read_now: bool) -> None:
    """Stopping rules, checked after every optimizer step; device counters are read only when ``read_now``."""
    cfg, state = run.cfg, run.state
    run.writer.check()  # a failed background checkpoint write (e.g. a full disk) ends the run now
    if read_now:
        state.skipped_steps, state.bad_streak = int(progress.bad_total), int(progress.bad_streak)
        if state.bad_streak >= cfg.max_bad_steps:
            raise diverged(run, f"{state.bad_streak} consecutive steps had a non-finite loss or gradient")
        if distributed.any_rank(stop.received is not None, run.dist, run.device):
            stop.received = stop.received or 15
            raise StopTraining("interrupted", exit_code=stop.exit_code)
    if cfg.max_steps and state.step >= cfg.max_steps:
        raise StopTraining(f"reached --max-steps {cfg.max_steps}")
    if run.budget_s:
        # Leave room for the final validation and checkpoint inside the budget. Processes' clocks differ a little:
        # under multi-process training they decide together, so all stop after the same step.
        over = run.elapsed() + run.val_cost >= run.budget_s
        if run.dist.enabled:
            over = read_now and distributed.any_rank(over, run.dist, run.device)
        if over:
            raise StopTraining(f"reached --time-budget {cfg.time_budget}")
    if cfg.patience and state.rounds_since_best >= cfg.patience:
        raise StopTraining(f"early stopping: no improvement in {cfg.patience} validation rounds")


def train_one_epoch(run: Run, stop: StopSignal, progress: Progress) -> None:
    """Steps over one epoch (from the saved batch on a resume), with validation rounds at fixed points."""
    cfg, state, batches = run.cfg, run.state, run.batches
    validating = (state.epoch + 1) % cfg.val_every == 0 or state.epoch + 1 == cfg.epochs
    points = validation_points(len(batches), cfg.val_rounds, cfg.accumulate) if validating else set()
    run.model.train()
    bar = tqdm(
        total=len(batches) * batches.global_batch,
        initial=state.batch * batches.global_batch,
        desc=f"epoch {state.epoch + 1}" + ("" if cfg.time_budget else f"/{cfg.epochs}"),
        unit="img",
        disable=not run.log.bars,
        leave=False,
    )
    source = batches.epoch(state.epoch, state.batch)
    if run.device.type == "cuda":
        source = prefetch(source, pin=True)
    for images, masks in source:
        index = state.batch
        group_start = index - index % cfg.accumulate
        group = min(cfg.accumulate, len(batches) - group_start)
        last = index + 1 == group_start + group
        loss, bad = (
            compiled_step(run, images, masks, group, last)
            if run.compile_pending
            else train_step(run, images, masks, group, last)
        )
        state.batch += 1
        progress.add(loss, bad, len(images) * run.dist.world)
        bar.update(len(images) * run.dist.world)
        if not last:
            continue
        read_now = state.step % cfg.log_every == 0 or index in points or stop.received is not None
        if read_now:
            values = progress.read()
            bar.set_postfix(loss=f"{values['train_loss']:.4f}", img_s=f"{values['img_s']:.1f}")
            run.log.scalars(state.step, values | {"lr": run.optimizer.param_groups[0]["lr"]})
        if index in points and run.data.val:
            validation_round(run, progress)
            run.last_val_step = state.step
            progress.reset()
        if cfg.save_every and state.step % cfg.save_every == 0:
            save(run, "last.pt")
        check_limits(run, stop, progress, read_now or run.device.type == "cpu")
    bar.close()


def run_epochs(run: Run, stop: StopSignal, progress: Progress) -> None:
    """Epoch after epoch, with last.pt (and epoch_NNN.pt) at the end of each."""
    cfg, state = run.cfg, run.state
    while state.epoch < cfg.epochs:
        train_one_epoch(run, stop, progress)
        state.epoch, state.batch = state.epoch + 1, 0
        save(run, "last.pt", *([f"epoch_{state.epoch:03d}.pt"] if cfg.save_epochs else []))
        if not run.data.val:
            state.best_step = state.step
            save(run, "best.pt", with_train_state=False)


def fit(cfg: TrainConfig, resume: dict | None = None, started: float | None = None, plan: list | None = None) -> dict:
    """Train a model; returns the best score, the run directory and the exit status.

    A time budget covers set-up (data decoding, model build) too, counted from ``started`` (``time.monotonic()``)
    when given: the command passes the moment it began, so that planning counts as well. Bad input found once
    training runs (a full disk, out of memory, divergence) ends the run with exit status 2 and its reason in
    train.log; an internal error is logged the same way and then raised. ``plan``: the planned choices and their
    reasons ``(option, value, why)``, shown in report.html.
    """
    started = time.monotonic() if started is None else started
    run = build_run(cfg, resume)
    run.log.plan = plan
    try:
        summary(run)
        stop, progress = StopSignal(), Progress(run.device)
        progress.bad_total.fill_(run.state.skipped_steps)
        progress.bad_streak.fill_(run.state.bad_streak)
        run.started, run.last_val_step = started, run.state.step
        with stop.installed():
            reason, code = train(run, stop, progress)
    except BaseException as err:
        finish(run, *unexpected(err))
        raise
    return finish(run, reason, code)


def train(run: Run, stop: StopSignal, progress: Progress) -> tuple[str, int]:
    """The epochs, and how they ended: (reason, exit status)."""
    try:
        run_epochs(run, stop, progress)
        return "finished all epochs", 0
    except StopTraining as stopped:
        return wrap_up(run, progress, str(stopped), stopped.exit_code)
    except torch.OutOfMemoryError:
        return out_of_memory(run), 2
    except UserError as err:  # e.g. a full disk under a checkpoint or metrics.csv
        return str(err), 2
    except OSError as err:  # a storage error that reached us without passing write_atomic
        mapped = storage_error(err, err.filename or run.dir)
        if mapped is None:
            raise
        return str(mapped), 2


def validation_round(run: Run, progress: Progress) -> None:
    """Validate and report; the training window is read first, so that its img/s counts training time only."""
    trained = progress.read()
    report_round(run, validate(run) | trained)


def wrap_up(run: Run, progress: Progress, reason: str, code: int) -> tuple[str, int]:
    """After a stopping rule: a last validation round for the final weights, and last.pt (when they are finite)."""
    try:
        if code == 0 and run.data.val and run.last_val_step != run.state.step:
            validation_round(run, progress)
        if code != 2 or weights_finite(run):  # a diverged run keeps its last finite last.pt
            save(run, "last.pt")
    except StopTraining as stopped:
        return str(stopped), stopped.exit_code
    except torch.OutOfMemoryError:
        return out_of_memory(run), 2
    except UserError as err:
        return str(err), 2
    if code in (130, 143):
        reason += (
            f": saved {run.dir / 'checkpoints' / 'last.pt'} at step {run.state.step}; "
            f"resume with: unetseg train --resume {run.dir}"
        )
    return reason, code
