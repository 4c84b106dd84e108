"""Prediction throughput of ``unetseg predict`` over a folder of Carvana-shaped images, end to end.

Counts everything a user waits for: JPEG decoding, resizing by --scale, the model, resizing the logits back, and
writing one PNG mask per image. Optionally compares with a one-image-at-a-time fp32 loop written like
Pytorch-UNet's ``predict.py`` (``--compare-naive``), and prints a table.

    python benchmarks/bench_predict.py --count 20 --width 16 64 --compare-naive             # CPU
    python benchmarks/bench_predict.py --count 512 --width 64 --device cuda --compare-naive  # GPU: bf16, compile
    python benchmarks/bench_predict.py --smoke                                              # seconds, for tests

The model has random weights unless ``-m CKPT`` is given; its output bias is set so that its masks are
car-shaped blobs covering 30% of the image, so writing them costs about what a trained model's masks cost.
On CUDA the run uses bf16 autocast, channels-last, batches, page-locked memory with non-blocking copies, and
cudnn autotuning (all images have one size); ``--compile`` adds ``torch.compile``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from unetseg.config import PredictConfig
from unetseg.core.checkpoint import inference_checkpoint, save_atomic
from unetseg.core.device import resolve_device
from unetseg.data.classmap import ClassMap
from unetseg.models.unet import UNet
from unetseg.predict.pipeline import predict_files
from unetseg.predict.segmenter import Segmenter, load

CARVANA = (1918, 1280)  # width, height of Carvana's car photos
NORM = {"scale": 255.0, "mean": [0.69, 0.69, 0.70], "std": [0.24, 0.24, 0.24]}


def make_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """JPEG photos of a car-like shape on a studio background (smooth gradient and sensor noise), made in threads."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(200, 240, width, dtype=np.float32)[None, :, None]
    background = np.clip(ramp + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)  # drawn once: slow
    shapes = rng.uniform(size=(count, 7))
    paths = [folder / f"car{i:04d}.jpg" for i in range(count)]

    def draw_car(i: int) -> None:
        if paths[i].exists():
            return
        image = Image.fromarray(np.roll(background, i * 37, axis=1))
        draw = ImageDraw.Draw(image)
        u = shapes[i]
        color = tuple(int(200 * c) for c in u[4:7])
        x0, y0 = int(width * (0.1 + 0.1 * u[0])), int(height * (0.35 + 0.1 * u[1]))
        x1, y1 = int(width * (0.8 + 0.1 * u[2])), int(height * (0.7 + 0.1 * u[3]))
        draw.rounded_rectangle([x0, y0, x1, y1], radius=max(2, (y1 - y0) // 3), fill=color)
        draw.ellipse([x0 + (x1 - x0) // 4, y0 - (y1 - y0) // 2, x1 - (x1 - x0) // 4, y0 + (y1 - y0) // 3], fill=color)
        for cx in (x0 + (x1 - x0) // 5, x1 - (x1 - x0) // 5):
            r = (y1 - y0) // 4
            draw.ellipse([cx - r, y1 - r, cx + r, y1 + r], fill=(20, 20, 20))
        image.save(paths[i], quality=90)

    with ThreadPoolExecutor() as pool:
        list(pool.map(draw_car, range(count)))
    return paths


def random_checkpoint(path: Path, width: int, scale: float, sample: Path, device: str) -> Path:
    """A random U-Net whose output bias is set so that 30% of ``sample`` is foreground, like a car in a photo.

    Its masks then look like a real model's (a car-shaped blob on these images), so writing them costs what it
    would: an all-empty or a noisy mask would make the PNG encoding unrealistically cheap or expensive.
    """
    torch.manual_seed(0)
    model = UNet(3, 2, width=width).eval()
    probs = Segmenter(inference_checkpoint(model, ClassMap([0, 255]), NORM, scale), device).predict_proba(sample)
    margin = np.log(probs[1] + 1e-12) - np.log(probs[0] + 1e-12)  # logit of class 1 minus logit of class 0
    with torch.no_grad():
        model.outc.conv.bias[1] -= float(np.quantile(margin, 0.7))
    save_atomic(inference_checkpoint(model, ClassMap([0, 255]), NORM, scale), path)
    return path


def naive_predict(model: torch.nn.Module, paths: list[Path], out: Path, scale: float, device: torch.device) -> None:
    """Pytorch-UNet's predict.py: one image at a time, fp32, logits resized on the host, mask saved as PNG."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    for path in paths:
        full = Image.open(path)
        w, h = full.size
        small = np.asarray(full.resize((int(scale * w), int(scale * h)), resample=Image.BICUBIC))
        x = small.transpose((2, 0, 1))
        x = x / 255.0 if (x > 1).any() else x
        x = torch.from_numpy(x)[None].to(device=device, dtype=torch.float32)
        with torch.no_grad():
            output = model(x).cpu()
            output = F.interpolate(output, (h, w), mode="bilinear")
            mask = output.argmax(dim=1)[0].long().numpy()
        result = np.zeros((h, w), dtype=np.uint8)
        result[mask == 1] = 255
        Image.fromarray(result).save(out / f"{path.stem}.png")


def timed(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_width(args: argparse.Namespace, paths: list[Path], work: Path, width: int) -> list[dict]:
    """Rows of the table for one model width: unetseg with and without TTA, and the naive loop."""
    device = resolve_device(args.device)
    ckpt = Path(args.model) if args.model else None
    ckpt = ckpt or random_checkpoint(work / f"unet{width}.pt", width, args.scale, paths[0], args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    segmenter = load(ckpt, args.device, amp)
    if args.compile:
        segmenter.model = torch.compile(segmenter.model, dynamic=False)
    # A first batch compiles, autotunes and fills the allocators; a last, smaller batch would compile again.
    rest = len(paths) % args.batch_size
    warm = [paths[: args.batch_size]] + ([paths[:rest]] if rest else [])
    rows = []
    for tta in args.tta:
        cfg = PredictConfig(
            model_path=str(ckpt),
            input=[str(p) for p in paths],  # run_folder is handed the images itself
            output=str(work / "out"),
            scale=args.scale,
            tta=None if tta == "none" else tta,
            batch_size=args.batch_size,
            workers=args.workers,
            quiet=True,
        )
        for images in warm:
            run_folder(cfg, segmenter, images, work)
        seconds = timed(lambda cfg=cfg: run_folder(cfg, segmenter, paths, work), device)
        label = "unetseg" + ("" if tta == "none" else f" --tta {tta}")
        rows.append(row(width, label, len(paths), seconds, str(segmenter.dtype)))
    if args.compare_naive:
        model = load(ckpt, args.device).model.to(memory_format=torch.contiguous_format)
        subset = paths[: args.naive_count or len(paths)]
        naive_predict(model, subset[:1], work / "naive", args.scale, device)
        seconds = timed(lambda: naive_predict(model, subset, work / "naive", args.scale, device), device)
        rows.append(row(width, "naive (Pytorch-UNet loop)", len(subset), seconds, "torch.float32"))
        for r in rows[:-1]:
            r["vs naive"] = f"{(r['images'] / r['seconds']) / (len(subset) / seconds):.1f}x"
    return rows


def run_folder(cfg: PredictConfig, segmenter: Segmenter, paths: list[Path], work: Path) -> None:
    shutil.rmtree(work / "out", ignore_errors=True)
    cfg.input = [str(p) for p in paths]
    predict_files(cfg, segmenter)


def row(width: int, mode: str, count: int, seconds: float, dtype: str) -> dict:
    print(f"width {width:>3}  {mode:<34}{count:>5} images {seconds:8.2f} s {count / seconds:8.2f} img/s", flush=True)
    return {"width": width, "mode": mode, "precision": dtype.replace("torch.", ""), "images": count, "seconds": seconds}


def print_table(rows: list[dict], args: argparse.Namespace, device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    size = f"{args.size[0]}x{args.size[1]}"
    print(f"\npredict throughput on {name}: {size} JPEG -> PNG masks, --scale {args.scale}, batch {args.batch_size}")
    print(f"{'width':>5}  {'mode':<34}{'precision':<11}{'images':>7}{'seconds':>9}{'img/s':>9}{'vs naive':>10}")
    for r in rows:
        print(
            f"{r['width']:>5}  {r['mode']:<34}{r['precision']:<11}{r['images']:>7}{r['seconds']:>9.2f}"
            f"{r['images'] / r['seconds']:>9.2f}{r.get('vs naive', ''):>10}"
        )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="images to predict")
    parser.add_argument("--width", type=int, nargs="+", default=[16, 64], help="U-Net widths to measure")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--scale", type=float, default=0.5, help="input scale (Carvana models use 0.5)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="decoder and writer threads (default: cores/2)")
    parser.add_argument("--tta", nargs="+", default=["none", "flips"], choices=["none", "flips", "full"])
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (after a warm-up batch)")
    parser.add_argument("--compare-naive", action="store_true", help="also time a Pytorch-UNet-style loop")
    parser.add_argument("--naive-count", type=int, help="images for the naive loop (default: --count); it is slow")
    parser.add_argument("-m", "--model", help="a trained checkpoint instead of random weights")
    parser.add_argument("--data", help="folder for the generated images (kept; default: a temporary folder)")
    parser.add_argument("--size", type=int, nargs=2, default=list(CARVANA), metavar=("W", "H"))
    parser.add_argument("--smoke", action="store_true", help="4 tiny images, width 4, every mode: for tests")
    args = parser.parse_args(argv)
    if args.model:
        from unetseg.core.checkpoint import load_checkpoint

        args.width = [int(load_checkpoint(args.model)["model"]["width"])]
    if args.smoke:
        args.count, args.width, args.size, args.batch_size, args.workers = 5, [4], [96, 64], 2, 2
        args.compare_naive, args.tta = True, ["none", "flips", "full"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every image has one size: autotuned convolutions pay off
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else work / "images"
        paths = make_images(data, args.count, tuple(args.size))
        rows = []
        for width in args.width:
            rows += bench_width(args, paths, work, width)
    print_table(rows, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
