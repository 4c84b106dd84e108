"""Logging overhead: training step time with loggers off vs csv, csv+tensorboard and csv+tensorboard+wandb.

Trains the same small U-Net on the same synthetic data once per logger set (in-process, ``--quiet``, default
``--log-every 10``), repeats the whole set ``--repeats`` times in rotated order, and prints one Markdown table:

- step time: seconds in the epoch loop (steps, validation rounds and all their logging; start-up and the final
  W&B upload wait are left out) per optimizer step, the best of the repeats (least disturbed by other load);
- end to end vs off: that step time against loggers off (no metrics.csv, no plots, nothing at all); on a shared
  machine this difference is mostly noise;
- logging time, measured inside the same runs (steadier): ``RunLog.scalars`` per step (the part paid at
  ``--log-every``), per validation round ``RunLog.validation`` plus the prediction panels the trainer makes for
  it, and all of it as a share of the epoch loop's time.

- report.html + curves.png: the job a validation round queues on the logging thread (``RunLog.write_pictures``:
  the charts, drawn once, curves.png and report.html), per drawing, how many drawings drew the charts (the final
  page reuses those of rows drawn already), and all drawings as a share of the epoch loop's time (a round skips its
  refresh unless all drawings, the final one included, stay within ``REPORT_SHARE`` of the time so far; the final
  one is counted too). They run beside training, so the loop does not wait for them, but on a machine with few
  cores they take CPU from it: this share is their cost.

A warm-up run, left out of the table, takes the first-run costs (imports, kernel set-up).

    python benchmarks/bench_logging.py                  # CPU, width 16, 64x64 images
    python benchmarks/bench_logging.py --device cuda --width 32 --size 256
    python benchmarks/bench_logging.py --smoke          # seconds; the test suite runs it
    python benchmarks/bench_logging.py --sets off,csv,csv+tensorboard   # without W&B installed
    python benchmarks/bench_logging.py --sample --sets off,csv --repeats 1 --epochs 1 --width 8 --val-rounds 3
                                                        # the bundled sample (256x256 crops of 65 images)

W&B runs offline (WANDB_MODE=offline) with its folders in a temporary directory; ``--sets`` leaves it out
where it is not installed.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from unetseg.config import TrainConfig
from unetseg.data.prepare import sample_dataset_dir
from unetseg.tracking import runlog as loggers
from unetseg.training import build as builder
from unetseg.training import loop as trainer

SETS = {
    "off": None,
    "csv": "csv",
    "csv+tensorboard": "csv,tensorboard",
    "csv+tensorboard+wandb": "csv,tensorboard,wandb",  # offline
}


def make_data(root: Path, count: int, size: int) -> Path:
    """Grey images with bright ellipses, and their binary masks."""
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(count):
        mask = Image.new("L", (size, size), 0)
        for _ in range(3):
            x, y, r = (int(v) for v in rng.integers([0, 0, size // 16], [size, size, size // 4]))
            ImageDraw.Draw(mask).ellipse([x - r, y - r, x + r, y + r], fill=255)
        image = 60 + 0.5 * np.asarray(mask) + rng.normal(0, 10, (size, size))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "imgs" / f"{i:04d}.png")
        mask.save(root / "masks" / f"{i:04d}.png")
    return root


class Timers:
    """Seconds spent in the epoch loop and in RunLog methods, by wrapping them for the run's duration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: object, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        setattr(owner, name, timed)
        self._restore.append((owner, name, original))

    def __enter__(self) -> Timers:
        self._restore: list = []
        self.wrap(trainer, "run_epochs")
        self.wrap(loggers.RunLog, "scalars")
        self.wrap(loggers.RunLog, "validation")
        self.wrap(trainer, "gallery")  # prediction panels: made every round for TensorBoard and W&B
        self.wrap(loggers.RunLog, "write_pictures")  # on the logging thread, beside training
        self.wrap(loggers.charts, "curves")  # the charts inside it, skipped when the rows were drawn already
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)


def train_once(data: Path, out: Path, logger: str | None, args: argparse.Namespace) -> dict:
    """One training run; returns step time and logger time."""
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        logger=logger or "csv",
        width=args.width,
        batch_size=args.batch,
        epochs=args.epochs,
        val_rounds=args.val_rounds,
        device=args.device,
        workers=1,
        quiet=True,
        save_epochs=False,
    )
    real_runlog = builder.RunLog
    if logger is None:  # loggers off: a RunLog with nowhere to write, as on ranks other than 0

        def silent(run_dir, quiet, loggers_, log_format):
            return real_runlog(None, True, "csv", log_format)

        builder.RunLog = silent
    try:
        with Timers() as timers:
            result = trainer.fit(cfg)
    finally:
        builder.RunLog = real_runlog
    steps, seconds, calls = result["steps"], timers.seconds, timers.calls
    report_s = seconds["write_pictures"] / max(calls["write_pictures"], 1)
    measured = calls["write_pictures"] and logger is not None
    logging = seconds["scalars"] + seconds["validation"] + seconds["gallery"]
    return {
        "step_s": seconds["run_epochs"] / steps,
        "scalars_ms": 1e3 * seconds["scalars"] / steps,
        "round_ms": 1e3 * (seconds["validation"] + seconds["gallery"]) / max(timers.calls["validation"], 1),
        "share": logging / seconds["run_epochs"],
        "rounds": calls["validation"],
        "report_ms": 1e3 * report_s if measured else float("nan"),
        "report_share": seconds["write_pictures"] / seconds["run_epochs"] if measured else float("nan"),
        "drawings": calls["write_pictures"],
        "charts": calls["curves"],
        "steps": steps,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--count", type=int, default=200, help="images (10%% are held out for validation)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--val-rounds", type=int, default=1, help="validation rounds per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sets", default=",".join(SETS), help="logger sets to compare, comma-separated")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for PyTorch (1 steadies timings on a shared machine)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--sample", action="store_true", help="train on the bundled sample instead of --count images")
    args = parser.parse_args()
    args.sets = [n.strip() for n in args.sets.split(",") if n.strip()]
    if set(args.sets) - set(SETS) or "off" not in args.sets:
        parser.error(f"--sets: choose from {', '.join(SETS)}; off (the baseline) is required")
    if args.smoke:
        args.width, args.size, args.count, args.epochs, args.repeats = 4, 32, 20, 1, 1
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["WANDB_MODE"] = "offline"
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            os.environ[name] = str(root / name.lower())
        data = sample_dataset_dir() if args.sample else make_data(root / "data", args.count, args.size)
        train_once(data, root / "warm-up", None, args)  # first-run costs (imports, kernel set-up) out of the table
        results: dict[str, list[dict]] = defaultdict(list)
        names = args.sets
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # rotate: spread drift
                out = root / f"run-{repeat}-{name}"
                results[name].append(train_once(data, out, SETS[name], args))
        print_table(results, args)


def print_table(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    first = results["off"][0]
    print(
        f"device {args.device}, U-Net width {args.width}, "
        f"{'the bundled sample' if args.sample else f'{args.size}x{args.size} images'}, batch {args.batch}, "
        f"{first['steps']} steps, {first['rounds']} validation rounds, --log-every 10, {args.repeats} repeat(s), "
        f"{torch.get_num_threads()} CPU thread(s)"
    )
    print()
    print(
        "| loggers | step time (ms, best) | end to end vs off | RunLog.scalars per step (ms) "
        "| logging per validation round (ms) | all logging, share of step time "
        "| report.html + curves.png per drawing (ms) | drawings (with charts) | report, share of epoch loop |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = min(r["step_s"] for r in results["off"])
    for name, runs in results.items():
        step = min(r["step_s"] for r in runs)
        scalars = statistics.median(r["scalars_ms"] for r in runs)
        round_ms = statistics.median(r["round_ms"] for r in runs)
        share = statistics.median(r["share"] for r in runs)
        report_ms = statistics.median(r["report_ms"] for r in runs)
        report_share = statistics.median(r["report_share"] for r in runs)
        drawings = f"{runs[0].get('drawings', 0)} ({runs[0].get('charts', 0)})"
        report = "-" if math.isnan(report_ms) else f"{report_ms:.0f} | {drawings} | {100 * report_share:.1f}%"
        print(
            f"| {name} | {1e3 * step:.1f} | {100 * (step / base - 1):+.1f}% | {scalars:.3f} | {round_ms:.1f} "
            f"| {100 * share:.2f}% | {report if report != '-' else '- | - | -'} |"
        )


if __name__ == "__main__":
    main()
