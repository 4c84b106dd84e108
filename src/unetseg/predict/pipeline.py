"""``unetseg predict``: masks for any number of image files, folders and globs, as a pipeline.

Decoder threads read and resize images ahead of the device; same-size images are batched; the device runs the
model and copies compact results back without waiting; writer threads encode and save each result as it is ready;
the progress bar counts written images. Memory stays bounded: only a few batches are in flight at any time.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from unetseg.config import PredictConfig
from unetseg.errors import UserError
from unetseg.predict.files import (
    check_model_flags,
    check_predict_args,
    expand_inputs,
    finish,
    prediction_row,
    write_files,
)
from unetseg.predict.outputs import Plan, Planned, plan_outputs
from unetseg.predict.segmenter import Segmenter, load
from unetseg.predict.writers import HostBatch, to_host, write_probs


@dataclass
class Decoded:
    """One input, decoded and resized for the model."""

    position: int
    pixels: np.ndarray  # (h, w, C) model input
    size: tuple[int, int]  # (H, W) of the input: masks are written at this size
    image: np.ndarray | None  # the full-size image, kept only for --overlay


def decode(segmenter: Segmenter, position: int, path: Path, scale: float | None, keep: bool) -> Decoded:
    """A decoder thread's part: read, match channels, resize for the model."""
    image = segmenter.prepare(path)
    return Decoded(position, segmenter.model_input(image, scale), image.shape[:2], image if keep else None)


def decoded_batches(
    segmenter: Segmenter, paths: list[Path], cfg: PredictConfig, pool: ThreadPoolExecutor, workers: int
) -> Iterator[list[Decoded]]:
    """Batches of same-size images, decoded ahead in ``pool``.

    A batch leaves once full; when too many images wait for company (many different sizes), the oldest partial
    batch leaves; the rest leave at the end.
    """
    ahead = 2 * max(cfg.batch_size, workers)  # enough to keep every decoder busy, few enough for memory
    todo = iter(enumerate(paths))
    futures: deque[Future] = deque()
    groups: dict[tuple, list[Decoded]] = {}

    def refill() -> None:
        for position, path in todo:
            futures.append(pool.submit(decode, segmenter, position, path, cfg.scale, cfg.viz))
            if len(futures) >= ahead:
                return

    refill()
    waiting = 0
    while futures:
        item = futures.popleft().result()
        refill()
        key = (item.pixels.shape, item.pixels.dtype.str, item.size)
        groups.setdefault(key, []).append(item)
        waiting += 1
        if len(groups[key]) == cfg.batch_size:
            waiting -= len(groups[key])
            yield groups.pop(key)
        elif waiting > ahead:  # many sizes: run the oldest partial batch rather than hold every image in memory
            oldest = next(iter(groups))
            waiting -= len(groups[oldest])
            yield groups.pop(oldest)
    yield from groups.values()


def run_batch(segmenter: Segmenter, batch: list[Decoded], cfg: PredictConfig) -> HostBatch:
    """The device's part: upload, infer, indices, and the start of the copies back."""
    pixels = torch.from_numpy(np.stack([d.pixels for d in batch]))
    if segmenter.device.type == "cuda":
        pixels = pixels.pin_memory()  # page-locked, so the upload in normalize() runs without blocking
    probs = segmenter.infer(pixels, batch[0].size, cfg.tile, cfg.overlap, cfg.tta, cfg.batch_size)
    index = segmenter.to_index(probs, cfg.threshold)
    return to_host(index, probs, segmenter.class_map.num_classes, cfg.probs)


def write_result(
    segmenter: Segmenter, cfg: PredictConfig, plan: Plan, item: Decoded, result: HostBatch, j: int, source: Path
) -> dict:
    """A writer thread's part: the files of one image, and its row of ``predictions.csv``."""
    result.wait()
    index = result.index[j].numpy()
    files: Planned = plan.items[item.position]
    mask = segmenter.encode(index, cfg.format) if files.mask is not None else index
    write_files(plan, files, cfg, segmenter.class_map, index, mask, item.image)
    if files.probs is not None:
        write_probs(files.probs, result.probs[j].numpy(), plan.ledger)
    return prediction_row(source, files.mask, item.size, result.counts[j].tolist(), segmenter.class_map)


def predict_files(cfg: PredictConfig, segmenter: Segmenter | None = None) -> list[Path]:
    """``unetseg predict``: one mask per input, at the input's resolution, in the format asked for.

    ``segmenter`` reuses a loaded model (then ``cfg.model_path``, ``device`` and ``amp`` are not used).
    Returns each input's mask path (not written with ``save=False``).
    """
    if segmenter is None:
        check_predict_args(cfg)
    elif not cfg.input:
        raise UserError("-i/--input is required: image files, folders or globs")
    segmenter = segmenter or load(cfg.model_path, cfg.device, cfg.amp)
    inputs = expand_inputs(cfg.input)
    model, source = segmenter.model, cfg.model_path or "in use"
    outputs, bilinear = getattr(model, "n_classes", None), getattr(model, "bilinear", None)
    check_model_flags(cfg, segmenter.class_map, outputs, bilinear, source)
    protected = [Path(cfg.model_path)] if cfg.model_path else []
    plan = plan_outputs(inputs, cfg, segmenter.class_map.num_classes, protected)
    try:
        rows = run_pipeline(segmenter, cfg, plan, inputs)
        finish(cfg, rows, plan)
    finally:
        plan.ledger.save()  # also after a failure: what was written is known to be predict's own
    return [item.name for item in plan.items]


def run_pipeline(segmenter: Segmenter, cfg: PredictConfig, plan: Plan, inputs: list[Path]) -> list[dict]:
    """Decode, infer and write every input; the rows of ``predictions.csv`` in input order."""
    rows: list[dict] = [{}] * len(inputs)
    workers = cfg.workers or max(1, (os.cpu_count() or 2) // 2)
    decoders = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    writers = ThreadPoolExecutor(workers, thread_name_prefix="write")
    pending: deque[tuple[int, Future]] = deque()
    bar = tqdm(total=len(inputs), desc="predict", unit="img", disable=cfg.quiet)

    def collect(keep: int) -> None:
        """Record finished writes in order, waiting while more than ``keep`` are in flight."""
        while pending and (pending[0][1].done() or len(pending) > keep):
            position, future = pending.popleft()
            rows[position] = future.result()
            bar.update(1)

    try:
        for batch in decoded_batches(segmenter, inputs, cfg, decoders, workers):
            result = run_batch(segmenter, batch, cfg)
            for j, item in enumerate(batch):
                args = (segmenter, cfg, plan, item, result, j, inputs[item.position])
                pending.append((item.position, writers.submit(write_result, *args)))
            collect(keep=4 * cfg.batch_size)
        collect(keep=0)
    finally:
        bar.close()
        for pool in (decoders, writers):
            pool.shutdown(wait=True, cancel_futures=True)
    return rows
