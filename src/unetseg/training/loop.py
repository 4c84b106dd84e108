"""The training loop: build -> (resume) -> epochs of steps with validation rounds -> checkpoints.

``fit`` only sequences; each stage is a named helper. Every ending of a run (finished, a stopping rule, a signal,
divergence, out of memory, a full disk, an internal error) goes through ``finish``, so that train.log's last line
says why the run ended.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from unetseg.config import TrainConfig
from unetseg.core import distributed
from unetseg.core.atomic import storage_error
from unetseg.core.device import autocast, standardize, to_unit
from unetseg.data.augment import augment_batch
from unetseg.data.sampler import prefetch
from unetseg.errors import UserError
from unetseg.evaluation.choice import is_better, round_scores
from unetseg.evaluation.scoring import device_batches, evaluate
from unetseg.training.build import build_run, steps_per_epoch
from unetseg.training.ending import finish, out_of_memory, unexpected
from unetseg.training.progress import Progress
from unetseg.training.signals import StopSignal
from unetseg.training.state import Learner, Run, StopTraining, TrainState, diverged, not_finite, save
from unetseg.training.summary import gallery, report_round, summary

__all__ = ["Progress", "StopTraining", "build_run", "finish", "fit", "train_step", "validation_points"]


def train_step(run: Run, images: torch.Tensor, masks: torch.Tensor, group: int, last: bool) -> tuple:
    """Forward and backward one batch; on the last batch of an accumulation group, the optimizer step.

    Returns (loss, bad) as device tensors; ``bad`` is None between optimizer steps.
    """
    cfg, state, learner, feed, hw = run.cfg, run.state, run.learner, run.feed, run.hw
    if state.batch % cfg.accumulate == 0:
        # Cleared here, not after the step: the last step's gradients stay readable for the histograms that
        # loggers draw at validation rounds, at no cost (they are freed before this forward, as before).
        learner.optimizer.zero_grad(set_to_none=True)
        learner.stats.save()
    x = to_unit(images, feed.data.norm, hw.device)
    y = masks.to(hw.device, non_blocking=True).long()
    if feed.augment is not None:
        seed = cfg.seed * 1_000_003 + state.epoch * 100_003 + state.batch
        offset = hw.dist.rank * feed.batches.batch_size
        x, y = augment_batch(x, y, seed, offset, feed.batches.global_batch, feed.augment)
    x = standardize(x, feed.data.norm, cfg.channels_last)
    ddp = getattr(learner.net, "_orig_mod", learner.net)  # torch.compile wraps the DDP module
    sync = last or not isinstance(ddp, DistributedDataParallel)
    with ddp.no_sync() if not sync else contextlib.nullcontext(), autocast(hw.device, hw.dtype):
        logits = learner.net(x)
        loss = learner.loss_fn(logits, y)
    learner.scaler.scale(loss / group).backward()
    if not last:
        return loss.detach(), None
    return loss.detach(), optimizer_step(learner, state, cfg.grad_clip, run.clock.fraction())


def optimizer_step(learner: Learner, state: TrainState, grad_clip: float, budget_spent: float) -> torch.Tensor:
    """Clip, step (skipped when the gradient is not finite), EMA; returns the device flag of a skipped step."""
    learner.schedule.set_step(state.step, budget_spent)
    learner.scaler.unscale_(learner.optimizer)
    clip = grad_clip if grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(learner.model.parameters(), clip)
    bad = ~torch.isfinite(norm)
    if learner.scaler.is_enabled():
        learner.scaler.step(learner.optimizer)  # skips non-finite steps itself
        learner.scaler.update()
    elif not bad.item():  # host sync; only on the CPU path, where it costs nothing
        learner.optimizer.step()
    learner.stats.restore_if(bad)  # a skipped step leaves BatchNorm's statistics as they were too
    if learner.ema:
        learner.ema.update(learner.model)
    state.step += 1
    return bad


def compiled_step(run: Run, images: torch.Tensor, masks: torch.Tensor, group: int, last: bool) -> tuple:
    """The first compiled step compiles: time it, and fall back to eager mode if compilation fails."""
    learner, log = run.learner, run.out.log
    started = time.monotonic()
    try:
        result = train_step(run, images, masks, group, last)
    except torch.OutOfMemoryError:
        raise  # not a compiler failure: eager mode would run out of memory too
    except Exception as err:  # inductor/dynamo failures come in many types
        log.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); continuing without it")
        learner.net, learner.compile_pending = learner.net._orig_mod, False
        learner.optimizer.zero_grad(set_to_none=True)
        return train_step(run, images, masks, group, last)
    if run.hw.device.type == "cuda":
        torch.cuda.synchronize()
    log.info(f"  compile     first step with torch.compile took {time.monotonic() - started:.1f} s")
    learner.compile_pending = False
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
    cfg, state, learner, feed, hw = run.cfg, run.state, run.learner, run.feed, run.hw
    data = feed.data
    started = time.monotonic()
    with learner.ema.applied(learner.model) if learner.ema else contextlib.nullcontext():
        if feed.val_batches is None and hw.device.type == "cuda":
            feed.val_batches = device_batches(data.val, cfg.val_batch_size, hw.device, hw.dist) or []
        result = evaluate(
            learner.model,
            data.val,
            data.norm,
            data.class_map.num_classes,
            hw.device,
            hw.dtype,
            cfg.val_batch_size,
            cfg.channels_last,
            dist_info=hw.dist,
            batches=feed.val_batches or None,
            loss_fn=learner.loss_fn,
        )
        choice = run.choice
        score = choice.value(result)  # foreground Dice, or mIoU when class 0 is a real class
        if not learner.weights_finite():  # whatever the score says, such a model is never the best
            raise not_finite(run)
        learner.schedule.observe(score)
        counts = result["image_counts"]
        peaked = is_better(score, state.peak)
        # A round below the peak but not measurably worse (few validation images, a noisy score) is the more-trained
        # model: it takes best.pt.
        improved = peaked or (state.peak_counts is not None and choice.as_good(counts, state.peak_counts))
        state.rounds_since_best = 0 if peaked else state.rounds_since_best + 1
        if peaked:
            state.peak, state.peak_counts = score, counts
        if improved:
            state.best, state.best_step = score, state.step
            save(run, "best.pt", with_train_state=False)
        wanted = hw.dist.is_main and (improved or run.out.log.wants_images)
        panels = gallery(learner.model, data, hw, cfg.channels_last) if wanted else None
    names = data.class_map.names
    row = {
        "step": state.step,
        "epoch": state.epoch + 1,
        "lr": learner.optimizer.param_groups[0]["lr"],
        **round_scores(result, choice),
        "val_loss": result["loss"],
    }
    row |= {f"dice_{n}": d for n, d in zip(names, result["dice"])}
    row |= {f"iou_{n}": d for n, d in zip(names, result["iou"])}
    run.clock.val_cost = time.monotonic() - started
    row |= {"val_s": run.clock.val_cost, "elapsed_s": run.clock.elapsed()}
    confusion = result["confusion"] if hw.dist.is_main else None  # for report.html (not a metrics.csv column)
    below = state.peak if improved and not peaked else None  # best.pt now holds a round under the peak
    return row | {
        "best": state.best,
        "improved": improved,
        "below_peak": below,
        "panels": panels,
        "confusion": confusion,
    }


def check_limits(run: Run, stop: StopSignal, progress: Progress, read_now: bool) -> None:
    """Stopping rules, checked after every optimizer step; device counters are read only when ``read_now``."""
    cfg, state, clock, hw = run.cfg, run.state, run.clock, run.hw
    run.out.writer.check()  # a failed background checkpoint write (e.g. a full disk) ends the run now
    if read_now:
        state.skipped_steps, state.bad_streak = int(progress.bad_total), int(progress.bad_streak)
        if state.bad_streak >= cfg.max_bad_steps:
            raise diverged(
                state, run.choice.name, f"{state.bad_streak} consecutive steps had a non-finite loss or gradient"
            )
        if distributed.any_rank(stop.received is not None, hw.dist, hw.device):
            stop.received = stop.received or 15
            raise StopTraining("interrupted", exit_code=stop.exit_code)
    if cfg.max_steps and state.step >= cfg.max_steps:
        raise StopTraining(f"reached --max-steps {cfg.max_steps}")
    if clock.budget_s:
        # Leave room for the final validation and checkpoint inside the budget. Processes' clocks differ a little:
        # under multi-process training they decide together, so all stop after the same step.
        over = clock.elapsed() + clock.val_cost >= clock.budget_s
        if hw.dist.enabled:
            over = read_now and distributed.any_rank(over, hw.dist, hw.device)
        if over:
            raise StopTraining(f"reached --time-budget {cfg.time_budget}")
    if cfg.patience and state.rounds_since_best >= cfg.patience:
        raise StopTraining(f"early stopping: no improvement in {cfg.patience} validation rounds")


def train_one_epoch(run: Run, stop: StopSignal, progress: Progress) -> None:
    """Steps over one epoch (from the saved batch on a resume), with validation rounds at fixed points."""
    cfg, state, batches, hw, log = run.cfg, run.state, run.feed.batches, run.hw, run.out.log
    validating = (state.epoch + 1) % cfg.val_every == 0 or state.epoch + 1 == cfg.epochs
    points = validation_points(len(batches), cfg.val_rounds, cfg.accumulate) if validating else set()
    run.learner.model.train()
    bar = tqdm(
        total=len(batches) * batches.global_batch,
        initial=state.batch * batches.global_batch,
        desc=f"epoch {state.epoch + 1}" + ("" if cfg.time_budget else f"/{cfg.epochs}"),
        unit="img",
        disable=not log.bars,
        leave=False,
    )
    source = batches.epoch(state.epoch, state.batch)
    if hw.device.type == "cuda":
        source = prefetch(source, pin=True)
    for images, masks in source:
        index = state.batch
        group_start = index - index % cfg.accumulate
        group = min(cfg.accumulate, len(batches) - group_start)
        last = index + 1 == group_start + group
        step = compiled_step if run.learner.compile_pending else train_step
        loss, bad = step(run, images, masks, group, last)
        state.batch += 1
        progress.add(loss, bad, len(images) * hw.dist.world)
        bar.update(len(images) * hw.dist.world)
        if not last:
            continue
        read_now = state.step % cfg.log_every == 0 or index in points or stop.received is not None
        if read_now:
            values = progress.read()
            bar.set_postfix(loss=f"{values['train_loss']:.4f}", img_s=f"{values['img_s']:.1f}")
            log.scalars(state.step, values | {"lr": run.learner.optimizer.param_groups[0]["lr"]})
        if index in points and run.feed.data.val:
            validation_round(run, progress)
            run.clock.last_val_step = state.step
            progress.reset()
        if cfg.save_every and state.step % cfg.save_every == 0:
            save(run, "last.pt")
        check_limits(run, stop, progress, read_now or hw.device.type == "cpu")
    bar.close()


def run_epochs(run: Run, stop: StopSignal, progress: Progress) -> None:
    """Epoch after epoch, with last.pt (and epoch_NNN.pt) at the end of each."""
    cfg, state = run.cfg, run.state
    while state.epoch < cfg.epochs:
        train_one_epoch(run, stop, progress)
        state.epoch, state.batch = state.epoch + 1, 0
        save(run, "last.pt", *([f"epoch_{state.epoch:03d}.pt"] if cfg.save_epochs else []))
        if not run.feed.data.val:
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
    run.out.log.plan = plan
    try:
        summary(run)
        stop, progress = StopSignal(), Progress(run.hw.device)
        progress.bad_total.fill_(run.state.skipped_steps)
        progress.bad_streak.fill_(run.state.bad_streak)
        run.clock.started, run.clock.last_val_step = started, run.state.step
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
        return out_of_memory(run.hw.device, run.feed.batches), 2
    except UserError as err:  # e.g. a full disk under a checkpoint or metrics.csv
        return str(err), 2
    except OSError as err:  # a storage error that reached us without passing write_atomic
        mapped = storage_error(err, err.filename or run.out.dir)
        if mapped is None:
            raise
        return str(mapped), 2


def validation_round(run: Run, progress: Progress) -> None:
    """Validate and report; the training window is read first, so that its img/s counts training time only."""
    trained = progress.read()
    report_round(run.out.log, run.choice, run.feed.data.class_map.names, run.learner.model, validate(run) | trained)


def wrap_up(run: Run, progress: Progress, reason: str, code: int) -> tuple[str, int]:
    """After a stopping rule: a last validation round for the final weights, and last.pt (when they are finite)."""
    try:
        if code == 0 and run.feed.data.val and run.clock.last_val_step != run.state.step:
            validation_round(run, progress)
        if code != 2 or run.learner.weights_finite():  # a diverged run keeps its last finite last.pt
            save(run, "last.pt")
    except StopTraining as stopped:
        return str(stopped), stopped.exit_code
    except torch.OutOfMemoryError:
        return out_of_memory(run.hw.device, run.feed.batches), 2
    except UserError as err:
        return str(err), 2
    if code in (130, 143):
        reason += (
            f": saved {run.out.dir / 'checkpoints' / 'last.pt'} at step {run.state.step}; "
            f"resume with: unetseg train --resume {run.out.dir}"
        )
    return reason, code
