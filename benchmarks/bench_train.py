"""Training speed: loader, step (fp32 / bf16 / bf16 + compile), inference, and end-to-end `unetseg train`.

Carvana-shaped synthetic data (1918x1280 RGB JPEG images, GIF masks, --scale 0.5 -> 959x640), classic U-Net
(width 64, transposed-conv up-sampling, 2 classes). Prints one Markdown table.

    python benchmarks/bench_train.py --device cuda --count 400   # full size, on a GPU
    python benchmarks/bench_train.py --smoke            # tiny sizes on the CPU (the test suite runs it)
    python benchmarks/bench_train.py --cpu-table        # CPU img/s at 256x256, widths 16/32/64, fp32 vs bf16
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from unetseg.cli import main as unetseg
from unetseg.core.device import autocast, normalize
from unetseg.data.augment import augment_batch, get_spec
from unetseg.data.prepare import prepare
from unetseg.data.sampler import TrainBatches
from unetseg.models.unet import UNet
from unetseg.training import loop as trainer
from unetseg.training.losses import ce_dice_loss

TFLOP_PER_IMAGE = 2.69  # forward + backward of the width-64 U-Net on 959x640 (issue's measurement)
BOUND_IMG_S = 296  # 798 TFLOP/s bf16 matmul on the H100 / 2.69 TFLOP


def _draw(args: tuple[Path, int, tuple[int, int]]) -> None:
    root, i, size = args
    rng = np.random.default_rng(i)
    w, h = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.4, 0.6) * h
    rx, ry = rng.uniform(0.2, 0.35) * w, rng.uniform(0.15, 0.3) * h
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    draw.rectangle([cx - rx * 0.6, cy - ry * 1.4, cx + rx * 0.5, cy], fill=255)
    noise = (rng.random((h // 16, w // 16, 3)) * 255).astype(np.uint8)
    background = Image.fromarray(noise).resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))
    car = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
    Image.composite(car, background, mask).save(root / "imgs" / f"car{i:05d}.jpg", quality=90)
    mask.convert("P").save(root / "masks" / f"car{i:05d}_mask.gif")


def make_carvana(root: Path, count: int, size: tuple[int, int] = (1918, 1280)) -> Path:
    """Carvana-shaped pairs (JPEG image, GIF mask named <id>_mask.gif), made once."""
    if (root / "imgs").is_dir() and len(list((root / "imgs").iterdir())) >= count:
        return root
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(_draw, [(root, i, size) for i in range(count)], chunksize=8))
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_loader(data, device: torch.device, batch: int, seconds: float) -> float:
    """img/s of batches leaving the loader and arriving normalised on the device."""
    batches = TrainBatches(data.train, batch, data.train[0].image.shape[:2], seed=0)
    images, started, epoch = 0, time.monotonic(), 0
    while time.monotonic() - started < seconds:
        for x, _ in batches.epoch(epoch):
            normalize(x.pin_memory() if device.type == "cuda" else x, data.norm, device)
            images += len(x)
            if time.monotonic() - started > seconds:
                break
        epoch += 1
    sync(device)
    return images / (time.monotonic() - started)


def bench_step(shape, device, dtype, compiled: bool, width: int, batch: int, steps: int, checkpointing=False) -> dict:
    """img/s and peak memory of the training step alone on one resident batch."""
    torch.manual_seed(0)
    model = UNet(3, 2, width=width, checkpointing=checkpointing).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4, **({"fused": True} if device.type == "cuda" else {}))
    net = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, *shape, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, *shape), device=device)

    def step() -> None:
        with autocast(device, dtype):
            loss = ce_dice_loss(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.monotonic()
    step()
    sync(device)
    first = time.monotonic() - started
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    started = time.monotonic()
    for _ in range(steps):
        step()
    sync(device)
    took = time.monotonic() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
    return {"img_s": batch * steps / took, "peak_gib": peak, "first_step_s": first}


@torch.inference_mode()
def bench_inference(shape, device, dtype, width: int, batch: int, steps: int) -> float:
    model = UNet(3, 2, width=width).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, *shape, device=device).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        with autocast(device, dtype):
            model(x)
    sync(device)
    started = time.monotonic()
    for _ in range(steps):
        with autocast(device, dtype):
            model(x).argmax(1)
    sync(device)
    return batch * steps / (time.monotonic() - started)


class GpuSampler:
    """Samples GPU utilisation with nvidia-smi every 100 ms (idle fraction = 1 - mean utilisation)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.values.append(float(line.split(",")[0]))

    def mark(self) -> int:
        return len(self.values)

    def idle_since(self, mark: int) -> float:
        window = self.values[mark:]
        return 1 - sum(window) / len(window) / 100 if window else math.nan

    def stop(self) -> None:
        if self.process:
            self.process.terminate()


def bench_end_to_end(root: Path, out: Path, epochs: int, args, sampler: GpuSampler, extra: list[str]) -> dict:
    """`unetseg train` as a user runs it (the plan included), with the benchmark's data, scale, width, batch and
    epochs, plus ``extra`` options; steady state = after the first epoch (compile, cache, warm-up)."""
    command = ["train", "--data", str(root), "--out", str(out), "--overwrite", "--quiet", "--scale", str(args.scale)]
    command += ["-e", str(epochs), "-b", str(args.batch), "--width", str(args.width), "--device", args.device]
    command += ["--workers", str(os.cpu_count() or 4), *(["--patch-size", str(args.patch)] if args.patch else [])]
    started = time.monotonic()
    mark = {"value": None}
    original = TrainBatches.epoch

    def marked(self, epoch, start=0):
        if epoch == 1 and mark["value"] is None:
            mark["value"] = sampler.mark()
        return original(self, epoch, start)

    TrainBatches.epoch = marked
    parts = {"validate": 0.0, "evaluate": 0.0, "save": 0.0, "gallery": 0.0, "report_round": 0.0}
    originals = {name: getattr(trainer, name) for name in parts}
    for name in parts:
        setattr(trainer, name, timed(originals[name], parts, name, torch.device(args.device)))
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # the printed plan
            code = unetseg([*command, *extra])
    finally:
        TrainBatches.epoch = original
        for name, function in originals.items():
            setattr(trainer, name, function)
    total = time.monotonic() - started
    if code:
        raise SystemExit(f"unetseg {' '.join(command + extra)} failed with exit status {code}")
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    per_epoch = {}
    for row in rows:
        per_epoch[int(row["epoch"])] = row  # the last round of each epoch
    first, last = float(per_epoch[1]["elapsed_s"]), float(rows[-1]["elapsed_s"])
    images_after = (int(rows[-1]["step"]) - int(per_epoch[1]["step"])) * args.batch
    return {
        "e2e_img_s": images_after / max(last - first, 1e-9),
        "first_epoch_s": first,
        "total_s": total,
        "val_round_s": float(np.mean([float(r["val_s"]) for r in rows])),
        "rounds": len(rows),
        "idle": sampler.idle_since(mark["value"]) if mark["value"] is not None else math.nan,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else math.nan,
        "dice": max(float(r["dice_fg"]) for r in rows),
        "parts": {name: seconds / len(rows) for name, seconds in parts.items()},  # per round
    }


def timed(function, totals: dict, name: str, device: torch.device):
    """``function`` that adds its wall time (device work included) to ``totals[name]``."""

    def wrapper(*args, **kwargs):
        sync(device)
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            sync(device)
            totals[name] += time.monotonic() - started

    return wrapper


def bench_augment(shape, device: torch.device, batch: int, steps: int) -> float:
    """Milliseconds per batch of the default augmentation preset alone (uint8 batch in, augmented floats out)."""
    images = torch.randint(0, 256, (batch, 3, *shape), dtype=torch.uint8, device=device)
    masks = torch.randint(0, 2, (batch, *shape), device=device)
    spec = get_spec("default")
    for seed in range(2):
        augment_batch(images.float() / 255, masks, seed, spec=spec)
    sync(device)
    started = time.monotonic()
    for seed in range(steps):
        augment_batch(images.float() / 255, masks, seed, spec=spec)
    sync(device)
    return (time.monotonic() - started) / steps * 1000


def profile_step(shape, device, width: int, batch: int, path: Path) -> None:
    """Top kernels of one bf16 step, eager and compiled, written to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tables = []
    for compiled in (False, True) if device.type == "cuda" else (False,):
        model = UNet(3, 2, width=width).to(device, memory_format=torch.channels_last)
        net = torch.compile(model) if compiled else model
        optimizer = torch.optim.AdamW(model.parameters(), 1e-4, fused=device.type == "cuda")
        x = torch.randn(batch, 3, *shape, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch, *shape), device=device)
        for _ in range(3):
            with autocast(device, torch.bfloat16):
                ce_dice_loss(net(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        sync(device)
        with profile(activities=activities) as prof:
            with autocast(device, torch.bfloat16):
                ce_dice_loss(net(x), y).backward()
            optimizer.step()
            sync(device)
        title = "compiled (torch.compile)" if compiled else "eager"
        tables.append(f"## one bf16 step, {title}\n" + prof.key_averages().table(sort_by=key, row_limit=30))
    path.write_text("\n\n".join(tables))


def cpu_table(batch: int = 8, steps: int = 3) -> list[tuple]:
    """CPU training img/s at 256x256, widths 16/32/64, fp32 vs bf16 autocast (chooses the CPU default)."""
    device = torch.device("cpu")
    rows = []
    for width in (16, 32, 64):
        fp32 = bench_step((256, 256), device, torch.float32, False, width, batch, steps)["img_s"]
        bf16 = bench_step((256, 256), device, torch.bfloat16, False, width, batch, steps)["img_s"]
        rows.append((width, fp32, bf16, bf16 / fp32))
    return rows


def mfu(img_s: float, full_size: bool) -> str:
    """Share of the bound (bf16 matmul peak / FLOP per image); only meaningful for the full-size setup."""
    return f", MFU {img_s / BOUND_IMG_S:.0%}" if full_size else ""


def step_sections(args, data, device: torch.device, shape: tuple, full: bool, add) -> None:
    """Loader alone, the training step alone in each precision, checkpointing, and inference alone."""
    add(("loader alone", f"{bench_loader(data, device, args.batch, args.seconds):.1f} img/s"))
    for label, dtype, compiled in (
        ("fp32", torch.float32, False),
        ("bf16", torch.bfloat16, False),
        ("bf16 + compile", torch.bfloat16, True),
    ):
        if compiled and not args.compile_step:
            continue
        r = bench_step(shape, device, dtype, compiled, args.width, args.batch, args.steps)
        add(
            (
                f"step alone, {label}",
                f"{r['img_s']:.1f} img/s, peak {r['peak_gib']:.2f} GiB, "
                f"first step {r['first_step_s']:.1f} s{mfu(r['img_s'], full)}",
            )
        )
    r = bench_step(shape, device, torch.bfloat16, False, args.width, args.batch, args.steps, checkpointing=True)
    add(("step alone, bf16 + --checkpointing", f"{r['img_s']:.1f} img/s, peak {r['peak_gib']:.2f} GiB"))
    add(
        (
            "augmentation alone, default preset",
            f"{bench_augment(shape, device, args.batch, args.steps):.1f} ms per batch",
        )
    )
    add(
        (
            "inference alone, fp32 / bf16",
            f"{bench_inference(shape, device, torch.float32, args.width, args.batch, args.steps):.1f}"
            f" / {bench_inference(shape, device, torch.bfloat16, args.width, args.batch, args.steps):.1f} img/s",
        )
    )


def run_sections(args, table: list[tuple[str, str]]) -> None:
    device = torch.device(args.device)
    full = args.width == 64 and tuple(args.size) == (1918, 1280) and args.scale == 0.5
    root = make_carvana(Path(args.data), args.count, args.size)
    shape = (int(args.size[1] * args.scale), int(args.size[0] * args.scale))
    add = table.append
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    add(
        (
            "data",
            f"{args.count} pairs {args.size[0]}x{args.size[1]} JPEG/GIF, scale {args.scale} -> "
            f"{shape[1]}x{shape[0]}"
            f", width {args.width}, batch {args.batch}, {card}"
            f", torch {torch.__version__}",
        )
    )
    started = time.monotonic()
    data = prepare(str(root), None, None, None, None, None, args.scale, 10, 0, os.cpu_count() or 4)
    add(("scan + decode + resize (once)", f"{time.monotonic() - started:.1f} s"))
    if not args.only_e2e:
        step_sections(args, data, device, shape, full, add)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = [("(defaults)", [])] + [(f"{' '.join(e)}", e) for e in (x.split() for x in args.e2e_extra)]
    for label, extra in runs:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sampler = GpuSampler()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                e = bench_end_to_end(root, Path(tmp) / "run", args.epochs, args, sampler, extra)
        finally:
            sampler.stop()
        add(
            (
                f"end to end `unetseg train` {label}, steady state",
                f"{e['e2e_img_s']:.1f} img/s{mfu(e['e2e_img_s'], full)}",
            )
        )
        add(("  first epoch (compile, warm-up) / whole run", f"{e['first_epoch_s']:.1f} s / {e['total_s']:.1f} s"))
        add(("  validation round", f"{e['val_round_s']:.2f} s each, {e['rounds']} rounds, best Dice {e['dice']:.3f}"))
        p = e["parts"]
        add(
            (
                "  per round: scoring / best.pt hand-off / gallery / report",
                f"{p['evaluate']:.3f} / {p['save']:.3f} / {p['gallery']:.3f} / {p['report_round']:.3f} s "
                f"(validate() {p['validate']:.3f} s; save includes the end-of-epoch last.pt)",
            )
        )
        add(("  GPU idle fraction (steady state)", f"{e['idle']:.1%}"))
        add(("  peak GPU memory", f"{e['peak_gib']:.2f} GiB"))
    if args.profile:
        profile_step(shape, device, args.width, args.batch, Path(args.profile))
        add(("profile of one bf16 step", args.profile))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "unetseg-carvana"))
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--size", type=int, nargs=2, default=(1918, 1280), metavar=("W", "H"))
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per step benchmark")
    parser.add_argument("--seconds", type=float, default=10, help="loader benchmark duration")
    parser.add_argument("--epochs", type=int, default=3, help="end-to-end epochs (the first is excluded)")
    parser.add_argument("--no-compile-step", dest="compile_step", action="store_false")
    parser.add_argument(
        "--e2e-extra", action="append", default=[], help="also run end to end with these options, e.g. '--augment none'"
    )
    parser.add_argument("--only-e2e", action="store_true", help="skip the loader, step and inference sections")
    parser.add_argument("--profile", default=None, help="write a kernel profile of one step to this file")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (for the test suite)")
    parser.add_argument("--cpu-table", action="store_true", help="CPU fp32 vs bf16 img/s at 256x256")
    args = parser.parse_args()
    if args.cpu_table:
        print("| width | fp32 img/s | bf16 img/s | bf16 / fp32 |\n|---|---|---|---|")
        for width, fp32, bf16, ratio in cpu_table():
            print(f"| {width} | {fp32:.2f} | {bf16:.2f} | {ratio:.2f}x |")
        return 0
    if args.smoke:
        args.device, args.count, args.size, args.width, args.batch = "cpu", 6, (96, 64), 4, 2
        args.steps, args.seconds, args.epochs, args.compile_step = 2, 0.5, 2, False
    table: list[tuple[str, str]] = []
    try:
        run_sections(args, table)
    finally:
        text = "| measurement | result |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in table)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
