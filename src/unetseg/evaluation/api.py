"""``unetseg evaluate``: per-class and per-image scores of a checkpoint on a dataset.

The scores follow the empty-mask rule and the reductions documented in :mod:`unetseg.evaluation.metrics` (boundary
distances: :mod:`unetseg.evaluation.boundary`). The numbers come from the same function that scores validation during
training, so they equal the validation scores in ``metrics.csv`` for the same images and precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from unetseg.config import EvaluateConfig
from unetseg.core.atomic import write_atomic
from unetseg.core.checkpoint import build_model, load_checkpoint
from unetseg.core.device import choose_dtype, resolve_device
from unetseg.core.meta import Norm
from unetseg.data.classmap import ClassMap
from unetseg.data.prepare import evaluation_samples
from unetseg.errors import UserError
from unetseg.evaluation.boundary import DISTANCES, require_scipy
from unetseg.evaluation.choice import ScoreChoice, checkpoint_choice
from unetseg.evaluation.metrics import SCORES, nanmean
from unetseg.evaluation.panels import predict_panels
from unetseg.evaluation.report import (
    json_safe,
    print_report,
    worst_images,
    write_confusion_csv,
    write_confusion_png,
    write_per_image_csv,
)
from unetseg.evaluation.scoring import evaluate


@dataclass(frozen=True)
class Report:
    """What ``unetseg.evaluate`` returns: the fields of the report ``unetseg evaluate --json`` writes, typed.

    ``report.miou`` and ``report["miou"]`` read the same value; :meth:`to_dict` is the ``--json`` layout (NaN kept).
    """

    checkpoint: str
    data: str
    scale: float
    images: int  # how many images were scored
    headline: dict  # name, label, value, kind (foreground or all) and reason of the score the model is judged by
    classes: list[dict]  # per class: name, value, dice, iou, precision, recall, pixel counts, image means
    miou: float  # mean IoU over every class
    dice_mean: float  # mean Dice over every class
    dice_fg: float  # mean Dice over classes 1..K-1
    iou_fg: float
    image_dice_fg_mean: float  # the foreground Dice averaged over images (each image weighs the same)
    macro: dict  # means over images of the per-image foreground scores
    micro: dict  # scores of all pixels pooled
    per_image: list[dict]
    confusion: list[list[int]]  # rows truth, columns prediction, in class order
    worst: list[str]  # the lowest-scoring images, worst first

    @classmethod
    def from_dict(cls, report: dict) -> Report:
        return cls(**{f.name: report[f.name] for f in fields(cls)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getitem__(self, key: str) -> object:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict:
    """Score ``cfg.model_path`` on every image of the dataset, at the scale it was trained at (or ``--scale``)."""
    if not cfg.model_path:
        raise UserError("-m/--model is required: the checkpoint to evaluate")
    if cfg.boundary:
        require_scipy()
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
        choose_dtype(cfg.precision, cfg.amp, device),
        cfg.batch_size,
        boundary=cfg.boundary,
    )
    choice = checkpoint_choice(ckpt, class_map, cfg.score)
    meta = {"checkpoint": str(cfg.model_path), "data": root, "scale": scale}
    report = build_report(result, class_map, meta, choice)
    report["worst"] = [row["image"] for row in worst_images(report, cfg.worst)]
    print_report(report, cfg.worst)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        write_per_image_csv(out / "per_image.csv", report)
        write_confusion_csv(out / "confusion.csv", report)
        write_confusion_png(out / "confusion.png", report)
    if cfg.report:
        write_html_report(Path(cfg.report), report, model, samples, ckpt["norm"], class_map, device, cfg)
    if cfg.json:
        write_atomic(cfg.json, json.dumps(json_safe(report), indent=2).encode())
    return report


def write_html_report(
    folder: Path,
    report: dict,
    model: torch.nn.Module,
    samples: list,
    norm: Norm,
    class_map: ClassMap,
    device: torch.device,
    cfg: EvaluateConfig,
) -> Path:
    """``report.html`` in ``folder``: the tables, the confusion matrix, and the worst images predicted again
    (only those ``--worst`` images go through the model a second time)."""
    from unetseg.tracking.html import write_page  # matplotlib loads only when a report is asked for
    from unetseg.tracking.report_html import evaluation_page

    by_name = {s.name: s for s in samples}
    worst = [by_name[name] for name in report["worst"] if name in by_name]
    dtype = choose_dtype(cfg.precision, cfg.amp, device)
    panels = predict_panels(model, worst, norm, device, dtype)
    path = write_page(folder / "report.html", evaluation_page(report, panels, class_map))
    print(f"  report: {path}")
    return path


def build_report(result: dict, class_map: ClassMap, meta: dict, choice: ScoreChoice | None = None) -> dict:
    """The evaluation result as one plain dict: the headline score and why, per class, the all-class and foreground
    means (both, always), per image, confusion matrix. ``choice`` defaults to the one the class map implies."""
    choice = choice or checkpoint_choice({}, class_map)
    names = class_map.names
    classes = []
    for k, (name, value) in enumerate(zip(names, class_map.values)):
        row = {"name": name, "value": value}
        row |= {s: result[s][k] for s in SCORES}
        row |= {f"image_{s}": result["class_image_mean"][s][k] for s in SCORES}
        row |= {
            "pixels_true": result["pixels_true"][k],
            "pixels_pred": result["pixels_pred"][k],
            "images_present": result["images_present"][k],
        }
        classes.append(row)
    macro, micro = dict(result["macro"]), dict(result["micro"])
    per_image = [
        {
            "image": image,
            "dice_fg": result["image_fg"]["dice"][i],
            "iou_fg": result["image_fg"]["iou"][i],
            "miou": result["image_all"]["iou"][i],
            "dice_mean": result["image_all"]["dice"][i],
            **{s: result["image_scores"][s][i] for s in SCORES},
            "pixels_true": result["image_pixels_true"][i],
            "pixels_pred": result["image_pixels_pred"][i],
        }
        for i, image in enumerate(result["images"])
    ]
    if "boundary" in result:
        _add_distances(result["boundary"], classes, per_image, macro)
    headline = {"name": choice.name, "label": choice.label, "value": choice.value(result), "kind": choice.kind}
    return meta | {
        "images": len(per_image),
        "headline": headline | {"reason": choice.reason},
        "classes": classes,
        "miou": result["miou"],
        "dice_mean": result["dice_mean"],
        "dice_fg": result["dice_fg"],
        "iou_fg": result["iou_fg"],
        "image_dice_fg_mean": result["image_dice_fg_mean"],
        "macro": macro,
        "micro": micro,
        "per_image": per_image,
        "confusion": result["confusion"],
    }


def _add_distances(distances: np.ndarray, classes: list[dict], per_image: list[dict], macro: dict) -> None:
    """HD95 and ASD ``(N, K, 2)``: per image, per class (mean over images), and the macro foreground mean."""
    values = torch.from_numpy(np.asarray(distances, dtype=np.float64))
    for j, name in enumerate(DISTANCES):
        per_class = nanmean(values[:, :, j], 0).tolist()
        for k, row in enumerate(classes):
            row[name] = per_class[k]
        image_fg = nanmean(values[:, 1:, j], 1)
        for i, row in enumerate(per_image):
            row[name] = values[i, :, j].tolist()
            row[f"{name}_fg"] = image_fg[i].item()
        macro[name] = nanmean(image_fg, 0).item()
