"""Accuracy of the default recipe under a time budget, by cross-validation, on the 2-core CPU.

    python benchmarks/bench_recipe.py                       # all three protocols (about an hour on 2 cores)
    python benchmarks/bench_recipe.py --minutes 2 --folds 2 # a shorter run of the same protocols
    python benchmarks/bench_recipe.py --smoke               # seconds (the test suite runs it)

Protocols: the bundled nuclei sample (5 folds, foreground Dice); ../shared/data/membrane-isbi2012 (5 folds, Dice of
the membrane class, mask value 0; skipped when absent); synthetic multi-class shapes with a class covering about 1%
of the pixels (train/validation split, every class's Dice). Default settings (the plan included) and --time-budget per
model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unetseg.cli import main as unetseg
from unetseg.data.prepare import sample_dataset_dir

MEMBRANE = Path(__file__).resolve().parents[2] / "shared" / "data" / "membrane-isbi2012"


def make_multiclass(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """Grey images with large discs (class 1), rectangles (class 2) and tiny dots (class 3, about 1% of pixels)."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        for _ in range(3):
            x, y, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(8, size // 6))]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
        for _ in range(2):
            x, y = rng.integers(0, size - 30, 2)
            draw.rectangle([x, y, x + int(rng.integers(10, 30)), y + int(rng.integers(10, 30))], fill=2)
        for _ in range(max(1, size * size // 2500)):
            x, y = rng.integers(2, size - 3, 2)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=3)
        m = np.asarray(mask)
        texture = np.array([90, 150, 60, 200])[m] + rng.normal(0, 25, m.shape)
        Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)).save(root / "imgs" / f"s{i:03d}.png")
        mask.save(root / "masks" / f"s{i:03d}.png")
    return root


def train(data: Path, out: Path, minutes: float, options: list[str]) -> None:
    """`unetseg train` with its defaults (the plan included) under a time budget."""
    code = unetseg(["train", "--data", str(data), "--time-budget", f"{minutes * 60:.0f}s", "--out", str(out), *options])
    if code:
        raise SystemExit(f"training failed with exit status {code}")


def cross_validation(data: Path, out: Path, folds: int, minutes: float, extra: list[str]) -> dict:
    """Pooled out-of-fold scores of ``folds`` models (cv.json)."""
    started = time.monotonic()
    train(data, out, minutes, ["--folds", str(folds), *extra])
    report = json.loads((out / "cv.json").read_text())
    report["wall_s"] = time.monotonic() - started
    return report


def split_run(data: Path, val: Path, out: Path, minutes: float, extra: list[str]) -> dict:
    """Train on ``data`` validating on ``val``; score best.pt on ``val``."""
    started = time.monotonic()
    train(data, out, minutes, ["--val-data", str(val), *extra])
    scores = out / "scores.json"
    unetseg(["evaluate", "-m", str(out / "checkpoints" / "best.pt"), "--data", str(val), "--json", str(scores)])
    return {"report": json.loads(scores.read_text()), "wall_s": time.monotonic() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="time budget per model")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", choices=("nuclei", "membrane", "multiclass"), action="append")
    parser.add_argument("--membrane", type=Path, default=MEMBRANE, help="the membrane-isbi2012 folder")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    extra = ["--width", "4", "--workers", "1"] if args.smoke else []
    minutes = 0.05 if args.smoke else args.minutes
    folds = 2 if args.smoke else args.folds
    only = set(args.only or ("nuclei", "membrane", "multiclass"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "nuclei" in only:
            r = cross_validation(sample_dataset_dir(), tmp / "nuclei", folds, minutes, extra)
            per_fold = ", ".join(f"{d:.3f}" for d in r["dice_fg_per_fold"])
            rows.append(
                (
                    "bundled nuclei sample",
                    f"{folds}-fold CV, {minutes:g} min per fold",
                    f"foreground Dice {r['dice_fg']:.4f} (folds {per_fold})",
                    r["wall_s"],
                )
            )
        if "membrane" in only and args.membrane.exists():
            r = cross_validation(args.membrane, tmp / "membrane", folds, minutes, extra)
            membrane = r["classes"][0]["dice"]  # class 0 = mask value 0 = membrane
            rows.append(
                (
                    "membrane-isbi2012",
                    f"{folds}-fold CV, {minutes:g} min per fold",
                    f"membrane (value 0) Dice {membrane:.4f}",
                    r["wall_s"],
                )
            )
        if "multiclass" in only:
            count, size = (12, 64) if args.smoke else (60, 192)
            data = make_multiclass(tmp / "shapes-train", count, size, seed=0)
            val = make_multiclass(tmp / "shapes-val", max(4, count // 5), size, seed=1)
            r = split_run(data, val, tmp / "shapes", minutes, extra)
            dice = ", ".join(f"{c['name']} {c['dice']:.3f}" for c in r["report"]["classes"])
            rows.append(
                (
                    "synthetic shapes, 1%-pixel class",
                    f"train/val split, {minutes:g} min",
                    f"Dice per class: {dice}",
                    r["wall_s"],
                )
            )
    print("| dataset | protocol | result | wall time |\n|---|---|---|---|")
    for name, protocol, result, wall in rows:
        print(f"| {name} | {protocol} | {result} | {wall / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
