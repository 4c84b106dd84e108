"""Data pipeline benchmark: scan time, start-up time and loader images/s, first run (cold) and second run (cached).

    python benchmarks/bench_data.py                 # 1,000 Carvana-shaped pairs in /tmp/carvana-bench (made once)
    python benchmarks/bench_data.py --smoke         # 5 small pairs in a temporary folder: checks that it runs

Carvana-shaped: 1918 x 1280 RGB JPEG images and 0/255 GIF masks named <id>_mask.gif, trained at --scale 0.5.
"Cold" means no unetseg cache (the OS page cache may still hold the files); "cached" is the second start, which
reads the scan index and memory-maps the decoded arrays. Each run is a fresh process. A last row times the
second start on --index-pairs small pairs (the scan index's own speed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def make_pair(root: Path, i: int, size: tuple[int, int], image_ext: str, mask_name: str) -> None:
    """A smooth random blob mask (0/255) and a textured image whose colours follow it."""
    width, height = size
    rng = np.random.default_rng(i)
    coarse = Image.fromarray((rng.random((8, 12)) * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    mask = (np.asarray(coarse) > 150).astype(np.uint8) * 255
    noise = Image.fromarray((rng.random((height // 16, width // 16, 3)) * 255).astype(np.uint8))
    image = np.asarray(noise.resize(size, Image.BILINEAR)).astype(np.int16) // 2
    image[mask > 0] += np.array([90, 40, 20], dtype=np.int16)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "imgs" / f"{i:05d}{image_ext}", quality=90)
    Image.fromarray(mask).save(root / "masks" / f"{i:05d}{mask_name}")


def make_dataset(root: Path, count: int, size: tuple[int, int], image_ext: str, mask_name: str) -> None:
    """Write the pairs once; a folder that already holds them (marker file) is kept."""
    marker = root / "BENCH.json"
    spec = {"count": count, "size": list(size), "image_ext": image_ext, "mask_name": mask_name}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda i: make_pair(root, i, size, image_ext, mask_name), range(count)))
    marker.write_text(json.dumps(spec))


def measure(root: str, scale: float, batch: int, workers: int, uncached_images: int) -> dict:
    """One start as `unetseg train` does it, then one epoch of the training loader (runs in a fresh process)."""
    from unetseg.data.cache import decoded_samples
    from unetseg.data.checks import default_channels, inspect_dataset
    from unetseg.data.sampler import TrainBatches
    from unetseg.data.samples import compute_norm, load_sample

    start = time.perf_counter()
    report = inspect_dataset(root, None, None, workers=workers)
    scanned = time.perf_counter()
    assert not report.problems, report.problems
    channels = default_channels(report.scan.channels)
    samples = decoded_samples(report.folders[0], report.class_map, channels, scale, workers=workers)
    compute_norm(samples)
    ready = time.perf_counter()
    sizes = {s.image.shape[:2] for s in samples}
    batches = TrainBatches(samples, batch, next(iter(sizes)) if len(sizes) == 1 else (256, 256), seed=0)
    seen = sum(len(images) for images, _ in batches.epoch(0))
    epoch = time.perf_counter() - ready
    result = {"pairs": len(samples), "scan_s": scanned - start, "start_s": ready - start}
    result |= {"loader_img_s": seen / epoch, "first_epoch_img_s": seen / (ready - start + epoch)}
    if uncached_images:  # what a loader without a cache pays every epoch: decode + resize each pair again
        pairs = report.folders[0].pairs[:uncached_images]
        tick = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda p: load_sample(p, report.class_map, channels, scale), pairs))
        result["decode_img_s"] = len(pairs) / (time.perf_counter() - tick)
    return result


def run_child(args: argparse.Namespace, root: Path, scale: float, uncached: int) -> dict:
    command = [sys.executable, __file__, "--child", str(root), "--scale", str(scale), "--batch-size"]
    command += [str(args.batch_size), "--workers", str(args.workers), "--uncached", str(uncached)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of the measured runs."""
    head = ["run", "pairs", "scan s", "start s", "loader img/s", "1st epoch img/s (incl. start)"]
    body = [
        [name, str(r["pairs"]), f"{r['scan_s']:.2f}", f"{r['start_s']:.2f}"]
        + [f"{r['loader_img_s']:.1f}", f"{r['first_epoch_img_s']:.1f}"]
        for name, r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [_row(row, widths) for row in [head, *body]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _row(cells: list[str], widths: list[int]) -> str:
    """First column left-aligned (names), the rest right-aligned (numbers)."""
    padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
    return "| " + " | ".join(padded) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/carvana-bench", help="where the generated dataset lives")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="threads, as unetseg train --workers")
    parser.add_argument("--index-pairs", type=int, default=5000, help="small pairs for the second-start row")
    parser.add_argument("--uncached", type=int, default=100, help="pairs decoded again to time a cache-less loader")
    parser.add_argument("--smoke", action="store_true", help="5 small pairs in a temporary folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.scale, args.batch_size, args.workers, args.uncached)))
        return
    temp = tempfile.mkdtemp(prefix="bench-data-") if args.smoke else None
    root = Path(temp) / "carvana" if temp else Path(args.root)
    pairs, size, index_pairs = (5, (96, 64), 20) if args.smoke else (args.pairs, (1918, 1280), args.index_pairs)
    uncached = min(args.uncached, pairs)
    make_dataset(root, pairs, size, ".jpg", "_mask.gif")
    small = root.parent / f"{root.name}-small-{index_pairs}"
    make_dataset(small, index_pairs, (64, 48), ".png", ".png")
    for folder in (root, small):
        shutil.rmtree(folder / ".unetseg", ignore_errors=True)  # cold: no unetseg cache
    cold = run_child(args, root, args.scale, uncached)
    cached = run_child(args, root, args.scale, 0)
    run_child(args, small, 1.0, 0)
    small_cached = run_child(args, small, 1.0, 0)
    print(
        f"{pairs} pairs {size[0]}x{size[1]} JPEG + GIF masks, --scale {args.scale}, batch {args.batch_size}, "
        f"{args.workers} threads, {os.cpu_count()} CPU cores"
    )
    rows = [
        ("first run (cold: scan + decode + cache)", cold),
        ("second run (index + memory-mapped cache)", cached),
        (f"second run, {index_pairs} pairs of 64x48 PNG", small_cached),
    ]
    print(table(rows))
    print(f"decoding every epoch instead (no cache, {uncached} pairs): {cold['decode_img_s']:.1f} img/s")
    if temp:
        shutil.rmtree(temp)


if __name__ == "__main__":
    main()
