"""``unetseg evaluate``: per-class and per-image scores of a checkpoint on a dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

from unetseg.config import EvaluateConfig
from unetseg.data.classmap import ClassMap
from unetseg.data.prepare import evaluation_samples
from unetseg.engine.checkpoint import build_model, load_checkpoint
from unetseg.engine.evaluation import evaluate
from unetseg.engine.precision import choose_dtype, resolve_device
from unetseg.errors import UserError


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict:
    """Score ``cfg.model_path`` on every image of the dataset, at the scale it was trained at (or ``--scale``)."""
    if not cfg.model_path:
        raise UserError("-m/--model is required: the checkpoint to evaluate")
    ckpt = load_checkpoint(cfg.model_path)
    class_map = ClassMap.from_dict(ckpt["class_map"])
    scale = cfg.scale or float(ckpt.get("scale", 1.0))
    samples, root = evaluation_samples(
        cfg.data,
        cfg.images,
        cfg.masks,
        class_map,
        int(ckpt["channels"]),
        scale,
        cfg.resize_to_mask,
        cfg.cache,
        cfg.cache_dir,
    )
    device = resolve_device(cfg.device)
    model = build_model(ckpt).to(device)
    result = evaluate(
        model,
        samples,
        ckpt["norm"],
        class_map.num_classes,
        device,
        choose_dtype("fp32", cfg.amp, device),
        cfg.batch_size,
    )
    report = {
        "checkpoint": str(cfg.model_path),
        "data": root,
        "images": len(samples),
        "scale": scale,
        "classes": [
            {"name": n, "value": v, "dice": d, "iou": i, "precision": p, "recall": r}
            for n, v, d, i, p, r in zip(
                class_map.names, class_map.values, result["dice"], result["iou"], result["precision"], result["recall"]
            )
        ],
        "dice_fg": result["dice_fg"],
        "iou_fg": result["iou_fg"],
        "image_dice_fg_mean": result["image_dice_fg_mean"],
        "per_image": [{"image": n, "dice": d} for n, d in zip(result["images"], result["image_dice"])],
        "confusion": result["confusion"],
    }
    print_report(report)
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(_json_safe(report), indent=2))
    return report


def print_report(report: dict) -> None:
    """A readable per-class table and the foreground means."""
    print(f"{report['checkpoint']} on {report['data']} ({report['images']} images, scale {report['scale']})")
    print(f"  {'class':<16}{'value':>10}{'dice':>9}{'iou':>9}{'precision':>11}{'recall':>9}")
    for row in report["classes"]:
        print(
            f"  {row['name']:<16}{str(row['value']):>10}"
            + "".join(f"{_show(row[k]):>{w}}" for k, w in (("dice", 9), ("iou", 9), ("precision", 11), ("recall", 9)))
        )
    print(
        f"  foreground mean: dice {_show(report['dice_fg'])}  iou {_show(report['iou_fg'])}  "
        f"(pixels pooled over all images; per-image mean dice {_show(report['image_dice_fg_mean'])})"
    )


def _show(value: float) -> str:
    return "empty" if math.isnan(value) else f"{value:.4f}"


def _json_safe(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
