"""Do the defaults generalize? unetseg's one command against a naive U-Net recipe, same budget, on held-out data.

    python benchmarks/bench_generalize.py                  # the whole suite (about 45 min per recipe on 2 cores)
    python benchmarks/bench_generalize.py --only cwfid     # one dataset
    python benchmarks/bench_generalize.py --smoke          # tiny synthetic data, seconds (the test suite runs it)
    python benchmarks/bench_generalize.py --only crackforest --no-naive --train-args "--scale 0.5"   # a variation

For each dataset: `unetseg train --data TRAIN --time-budget T` with nothing else (plus --val-data where the dataset
has an official validation split), then `unetseg evaluate` of best.pt on the held-out split; and the naive recipe
below, trained for the same time in the same process count, its logits resized back and scored at the data's own
resolution. Scores: foreground Dice (binary), Dice of the membrane class (value 0), or mIoU over all classes.
Datasets are read from ../shared/data (several are for non-commercial research only: see each SOURCE.md); splits are
made of symbolic links in a temporary folder. Run on an idle machine: a second job halves every budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw
from torch import nn

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IGNORE = 255  # the naive recipe's ignore index (CrossEntropyLoss); class indices stay below it


@dataclass
class Suite:
    name: str
    split: str  # "fold0" (fold 0 of 5), "every5" (sorted names, every 5th to test), "official" (train/ test/)
    score: str  # "fg" foreground Dice, "value0" Dice of mask value 0, "miou" mean IoU over all classes
    minutes: float
    naive_size: tuple[int, int]  # (width, height) the naive recipe resizes every image to


SUITE = [
    Suite("nuclei-dsb2018", "fold0", "fg", 5, (128, 128)),
    Suite("membrane-isbi2012", "fold0", "value0", 5, (256, 256)),
    Suite("crackforest", "every5", "fg", 5, (240, 160)),
    Suite("cwfid", "official", "miou", 10, (320, 240)),
    Suite("msrc-v2", "official", "miou", 10, (160, 112)),
    Suite("stanford-background", "every5", "miou", 10, (160, 128)),
]


# ---- data: splits as folders of links ------------------------------------------------------------------------------


def pairs(folder: Path) -> list[tuple[Path, Path]]:
    masks = {p.stem: p for p in (folder / "masks").iterdir()}
    return [(p, masks[p.stem]) for p in sorted((folder / "imgs").iterdir()) if p.stem in masks]


def link_split(items: list[tuple[Path, Path]], dest: Path, classes: Path | None) -> Path:
    for sub in ("imgs", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for image, mask in items:
        (dest / "imgs" / image.name).symlink_to(image.resolve())
        (dest / "masks" / mask.name).symlink_to(mask.resolve())
    if classes is not None and classes.exists():
        shutil.copy(classes, dest / "classes.yaml")
    return dest


def make_splits(suite: Suite, root: Path, work: Path) -> tuple[Path, Path | None, Path, str]:
    """(train, official validation or None, test, note) folders for one dataset."""
    note = ""
    if suite.split == "official":
        train, test = pairs(root / "train"), pairs(root / "test")
        if suite.name == "cwfid":
            names = {p.stem for p, _ in train}
            dropped = [p.stem for p, _ in test if p.stem in names]
            test = [t for t in test if t[0].stem not in names]
            note = f"dropped from test (also in train): {', '.join(dropped)}" if dropped else ""
        val = pairs(root / "val") if (root / "val").exists() else []
        classes = root / "train" / "classes.yaml"
    else:
        items = pairs(root)
        if suite.split == "every5":
            test = items[4::5]
            train = [p for i, p in enumerate(items) if i % 5 != 4]
        else:  # fold 0 of 5, as unetseg's own folds split
            order = np.random.default_rng(0).permutation(len(items))
            held = set(order[0::5].tolist())
            test = [p for i, p in enumerate(items) if i in held]
            train = [p for i, p in enumerate(items) if i not in held]
        val, classes = [], root / "classes.yaml"
    train_dir = link_split(train, work / "train", classes)
    val_dir = link_split(val, work / "val", classes) if val else None
    return train_dir, val_dir, link_split(test, work / "test", classes), note


def class_values(folder: Path) -> list[int]:
    """The mask values that are classes: all but the classes file's ``ignore`` value (binary 0/255 masks have none,
    and 255 is their foreground)."""
    values: set[int] = set()
    for _, mask in pairs(folder):
        values |= set(np.unique(np.asarray(Image.open(mask))).tolist())
    classes = folder / "classes.yaml"
    ignore = (yaml.safe_load(classes.read_text()) or {}).get("ignore") if classes.exists() else None
    return sorted(values - {ignore})


def load(folder: Path, values: list[int], size: tuple[int, int] | None) -> tuple[list, list]:
    """Images (C, H, W) float in [0, 1] and masks (H, W) class indices (IGNORE kept), resized to ``size`` if given."""
    lut = np.full(256, IGNORE, np.int64)
    lut[values] = np.arange(len(values))
    images, masks = [], []
    for image_path, mask_path in pairs(folder):
        image = Image.open(image_path).convert("RGB")
        mask = Image.open(mask_path)
        if size is not None:
            image, mask = image.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST)
        images.append(torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1))
        masks.append(torch.from_numpy(lut[np.asarray(mask)]))
    return images, masks


# ---- the naive recipe: whole images at a fixed size, a plain U-Net, AdamW, flips ----------------------------------


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class NaiveUNet(nn.Module):
    def __init__(self, classes: int, widths: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        self.down = nn.ModuleList([block(3, widths[0])] + [block(a, b) for a, b in zip(widths, widths[1:])])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths, widths[1:])])
        self.merge = nn.ModuleList([block(2 * a, a) for a in widths[:-1]])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.down):
            x = down(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([skips[i], self.up[i](x)], 1))
        return self.head(x)


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs, valid = logits.softmax(1), (target != IGNORE).unsqueeze(1)
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)
    probs, onehot = probs * valid, onehot * valid
    inter, total = (probs * onehot).sum((0, 2, 3)), (probs + onehot).sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (total + 1)).mean()


def naive_train(train_dir: Path, values: list[int], size: tuple[int, int], seconds: float) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    images, masks = load(train_dir, values, size)
    x, y = torch.stack(images), torch.stack(masks)
    model, multiclass = NaiveUNet(len(values)), len(values) > 2
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    batch, epochs, started = (8 if multiclass else 16), 0, time.monotonic()
    while time.monotonic() - started < seconds:
        for index in torch.randperm(len(x)).split(batch):
            xb, yb = x[index], y[index]
            flip = torch.rand(len(index)) < 0.5
            xb[flip], yb[flip] = xb[flip].flip(-1), yb[flip].flip(-1)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, ignore_index=IGNORE)
            loss = loss if multiclass else loss + soft_dice(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.monotonic() - started >= seconds:
                break
        epochs += 1
    return model.eval(), epochs


@torch.no_grad()
def naive_confusion(model: nn.Module, test_dir: Path, values: list[int], size: tuple[int, int]) -> np.ndarray:
    """Logits resized back to each image's own size, scored there."""
    k = len(values)
    cm = np.zeros((k, k), np.int64)
    small, _ = load(test_dir, values, size)
    _, truths = load(test_dir, values, None)
    for image, truth in zip(small, truths):
        logits = F.interpolate(model(image[None]), size=truth.shape, mode="bilinear", align_corners=False)
        pred, keep = logits.argmax(1)[0].flatten(), truth.flatten() != IGNORE
        cm += np.bincount(truth.flatten()[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    return cm


# ---- unetseg: the one command ------------------------------------------------------------------------------------


def unetseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetseg", *args], capture_output=True, text=True)


def unetseg_run(
    train_dir: Path, val_dir: Path | None, test_dir: Path, out: Path, seconds: float, extra: list[str]
) -> dict:
    args = ["train", "--data", str(train_dir), "--time-budget", f"{seconds:.0f}s", "--out", str(out), "--quiet"]
    args += extra  # --train-args: a variation of the defaults to measure against them
    started = time.monotonic()
    result = unetseg(*args, *(["--val-data", str(val_dir)] if val_dir else []))
    wall = time.monotonic() - started
    if result.returncode:
        raise SystemExit(f"unetseg train failed ({result.returncode}): {result.stderr[-2000:]}")
    scores = out / "test.json"
    result = unetseg(
        "evaluate", "-m", str(out / "checkpoints" / "best.pt"), "--data", str(test_dir), "--json", str(scores)
    )
    if result.returncode:
        raise SystemExit(f"unetseg evaluate failed ({result.returncode}): {result.stderr[-2000:]}")
    report = json.loads(scores.read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    keys = ("scale", "patch_size", "flips", "augment", "width", "learning_rate", "class_weights")
    planned = {k: config.get(k) for k in keys}
    confusion, values = np.array(report["confusion"]), [c["value"] for c in report["classes"]]
    return {"confusion": confusion, "values": values, "wall": wall, "plan": planned} | time_spent(out, wall)


def time_spent(out: Path, wall: float) -> dict:
    """Seconds in the pilot runs, in the main run's validation rounds, and the rest (training and set-up)."""
    pilots = out / "pilots" / "pilots.json"
    record = json.loads(pilots.read_text()) if pilots.exists() else {}
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    validation = sum(float(r["val_s"]) for r in rows if r.get("val_s"))
    pilot = float(record.get("spent_s", 0.0))
    winner = record.get("winner", "no pilots")
    return {"pilot_s": pilot, "val_s": validation, "train_s": wall - pilot - validation, "pilot_winner": winner}


# ---- scores and the table -----------------------------------------------------------------------------------------


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice per class from a confusion matrix (rows truth, columns prediction); NaN where a class is absent."""
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / union, 2 * tp / (union + tp)


def headline(cm: np.ndarray, values: list[int], score: str) -> float:
    iou, dice = per_class(cm)
    if score == "miou":
        return float(np.nanmean(iou))
    if score == "value0":
        return float(dice[values.index(0)])
    return float(np.nanmean(dice[1:]))


def run_one(suite: Suite, root: Path, work: Path, scale: float, extra: list[str], naive: bool = True) -> dict:
    train_dir, val_dir, test_dir, note = make_splits(suite, root, work)
    values = class_values(train_dir)
    seconds = suite.minutes * 60 * scale
    load_before = os.getloadavg()[0]
    naive_score, epochs = float("nan"), 0
    if naive:
        model, epochs = naive_train(train_dir, values, suite.naive_size, seconds)
        naive_score = headline(naive_confusion(model, test_dir, values, suite.naive_size), values, suite.score)
    ours = unetseg_run(train_dir, val_dir, test_dir, work / "run", seconds, extra)
    shares = np.bincount(np.concatenate([m.flatten() for m in load(test_dir, values, None)[1]]), minlength=256)
    iou, _ = per_class(ours["confusion"])
    return {
        "dataset": suite.name,
        "budget_s": seconds,
        "naive": naive_score,
        "train_args": " ".join(extra),
        "naive_epochs": epochs,
        "unetseg": headline(ours["confusion"], ours["values"], suite.score),
        "unetseg_wall_s": ours["wall"],
        **{k: ours[k] for k in ("pilot_s", "train_s", "val_s", "pilot_winner")},
        "plan": ours["plan"],
        "score": suite.score,
        "iou": {str(v): round(float(i), 3) for v, i in zip(ours["values"], iou)},
        "share": {str(v): float(shares[i] / shares[: len(values)].sum()) for i, v in enumerate(values)},
        "load": f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}",
        "note": note,
    }


def smoke_dataset(root: Path, count: int = 10) -> Path:
    """Discs and bars on noise, 3 classes (class 0 named sky): a stand-in suite entry for the test."""
    rng = np.random.default_rng(0)
    for sub in ("imgs", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mask = Image.new("L", (64, 48), 0)
        draw = ImageDraw.Draw(mask)
        x, y = rng.integers(8, 40, 2).tolist()
        draw.ellipse([x - 8, y - 8, x + 8, y + 8], fill=1)
        top = int(rng.integers(0, 40))
        draw.rectangle([2, top, 62, top + 6], fill=2)
        m = np.asarray(mask)
        image = np.clip(np.array([60, 160, 220])[m] + rng.normal(0, 20, m.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).convert("RGB").save(root / "imgs" / f"s{i:02d}.png")
        mask.save(root / "masks" / f"s{i:02d}.png")
    (root / "classes.yaml").write_text("classes:\n  sky: 0\n  disc: 1\n  bar: 2\n")
    return root


def print_table(rows: list[dict]) -> None:
    print(
        "| dataset | budget | score | naive | unetseg | ratio | unetseg IoU per class (value:IoU) | under 0.10 "
        "| pilot / train / validation s | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ious = " ".join(f"{v}:{i:.2f}" for v, i in r["iou"].items())
        ratio = r["unetseg"] / r["naive"] if r["naive"] > 0 else float("nan")  # NaN: --no-naive
        budget = f"{r['budget_s'] / 60:.1f} min"
        row = [r["dataset"], budget, r["score"], f"{r['naive']:.4f}", f"{r['unetseg']:.4f}", f"{ratio:.3f}", ious]
        weak = [v for v, i in r["iou"].items() if r["share"].get(v, 0) >= 0.003 and not i >= 0.10]
        spent = f"{r['pilot_s']:.0f} / {r['train_s']:.0f} / {r['val_s']:.0f}"
        print("| " + " | ".join(row + [" ".join(weak) or "none", spent, r["load"]]) + " |")
    ratios = [r["unetseg"] / r["naive"] for r in rows if r["naive"] > 0]  # NaN > 0 is False
    if ratios:
        print(f"\nmean ratio {np.mean(ratios):.3f}; unetseg >= naive on {sum(x >= 1 for x in ratios)}/{len(ratios)}")
    for r in rows:
        plan = ", ".join(f"{k} {v}" for k, v in r["plan"].items())
        if r.get("train_args"):
            print(f"{r['dataset']}: unetseg train with {r['train_args']}")
        print(f"{r['dataset']}: naive {r['naive_epochs']} epochs; unetseg {r['unetseg_wall_s']:.0f} s wall, {plan}")
        print(f"{r['dataset']}: pilot winner {r['pilot_winner']}")
        if r["note"]:
            print(f"{r['dataset']}: {r['note']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", help="dataset names to run")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget (e.g. 0.2 to try)")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data, a few seconds per recipe")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--train-args", default="", help='options added to `unetseg train` (e.g. "--scale 0.5")')
    parser.add_argument("--no-naive", action="store_true", help="skip the naive recipe (a variation of ours only)")
    args = parser.parse_args()
    extra = shlex.split(args.train_args)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-generalize-") as tmp:
        if args.smoke:
            root = smoke_dataset(Path(tmp) / "smoke")
            smoke = Suite("smoke", "every5", "miou", 0.1, (64, 48))
            rows.append(run_one(smoke, root, Path(tmp) / "w", 1.0, extra, not args.no_naive))
        for suite in SUITE:
            if args.smoke or (args.only and suite.name not in args.only):
                continue
            if not (SHARED / suite.name).exists():
                print(f"{suite.name}: skipped, {SHARED / suite.name} is absent", file=sys.stderr)
                continue
            work = Path(tmp) / suite.name
            rows.append(run_one(suite, SHARED / suite.name, work, args.budget_scale, extra, not args.no_naive))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
