"""Scoring a model on whole images: one code path for validation during training and ``unetseg evaluate``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unetseg.core.device import autocast, normalize
from unetseg.core.distributed import DistInfo, all_reduce_sum, gather_lists
from unetseg.core.meta import Norm
from unetseg.data.samples import Sample, eval_batches
from unetseg.evaluation.metrics import (
    class_scores,
    confusion_matrix,
    means,
    per_image_counts,
    predict_classes,
    summarize,
)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    samples: list[Sample],
    norm: Norm,
    num_classes: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    channels_last: bool = True,
    threshold: float = 0.5,
    dist_info: DistInfo | None = None,
    batches: list[tuple[torch.Tensor, torch.Tensor, list[str]]] | None = None,
    boundary: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Confusion matrix and per-image counts over every sample (whole images, nothing dropped).

    Returns the pooled per-class scores, ``dice_fg``/``iou_fg`` (means over foreground classes), ``miou`` and
    ``dice_mean`` (means over every class), per-image
    scores (in the order of ``samples``) and the rest of :func:`unetseg.evaluation.metrics.summarize`. All integer
    accumulation stays on the device until the end (one host sync per evaluation). Under DDP each rank scores
    every world-th image and the integer counts are summed: no image twice, none lost. ``batches`` (from
    :func:`device_batches`) replaces ``samples`` with batches already resident on the device. ``boundary`` adds
    per-image HD95 and ASD (``boundary``: ``(N, K, 2)``), computed on the host, which costs a copy of each
    batch's prediction. ``loss_fn`` adds ``loss``: the training loss on whole validation images, the mean of
    each batch's loss weighted by its images (summed on the device, one read with the rest).
    """
    info = dist_info or DistInfo()
    everything, samples = samples, samples[info.rank :: info.world]
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    counts, names, distances = [], [], []
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (weighted loss, images)
    for images, masks, batch_names in batches if batches is not None else eval_batches(samples, batch_size):
        x = normalize(images, norm, device, channels_last)
        target = masks.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(x)
        if logits.shape[-2:] != target.shape[-2:]:  # a downscaled input, scored at the mask's own size
            logits = F.interpolate(logits.float(), target.shape[-2:], mode="bilinear", align_corners=False)
        pred = predict_classes(logits, threshold)
        if loss_fn is not None:
            loss_sum += torch.stack(
                [loss_fn(logits.float(), target).double() * len(target), loss_sum.new_tensor(len(target))]
            )
        cm += confusion_matrix(pred, target, num_classes)
        counts.append(per_image_counts(pred, target, num_classes))
        names += batch_names
        if boundary:
            from unetseg.evaluation.boundary import boundary_scores

            distances.append(boundary_scores(pred.cpu().numpy(), masks.cpu().numpy(), num_classes))  # CPU-GPU sync
    model.train(was_training)
    all_reduce_sum(cm, info)
    names = gather_lists(names, info)
    counts = gather_lists(torch.cat(counts).cpu().tolist() if counts else [], info)
    order = _input_order(everything, names)
    names = [names[i] for i in order]
    counts = torch.tensor(counts, dtype=torch.int64).view(-1, num_classes, 3)[order]
    result = result_from_counts(cm, counts, names)
    if loss_fn is not None:
        total, images = all_reduce_sum(loss_sum, info).tolist()
        result["loss"] = total / images if images else float("nan")
    if boundary:
        gathered = gather_lists(np.concatenate(distances).tolist() if distances else [], info)
        result["boundary"] = np.array(gathered, dtype=np.float64).reshape(-1, num_classes, 2)[order]
    return result


def result_from_counts(cm: torch.Tensor, counts: torch.Tensor, names: list[str]) -> dict:
    """Every score of an evaluation from its pooled ``(K, K)`` confusion matrix and ``(N, K, 3)`` image counts."""
    summary = summarize(cm, counts)
    scores = class_scores(cm)
    return {
        **means(scores),
        **scores,
        "confusion": cm.cpu().tolist(),
        "images": list(names),
        "image_counts": counts.cpu(),  # (N, K, 3): what a later round is compared with (choice.as_good)
        "image_dice": summary["image_scores"]["dice"],
        "image_dice_fg_mean": summary["macro"]["dice"],
        **summary,
    }


def _input_order(samples: list[Sample], names: list[str]) -> list[int]:
    """Positions that put batch-ordered results back in the samples' order (batches group images by size)."""
    slots: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        slots.setdefault(name, []).append(i)
    return [slots[s.name].pop(0) for s in samples]


def device_batches(
    samples: list[Sample], batch_size: int, device: torch.device, info: DistInfo | None = None, share: float = 0.2
) -> list | None:
    """This rank's validation batches, copied to the GPU once (as uint8) when they take under ``share`` of its free
    memory: later rounds then cost only the forward passes. None on the CPU or when they do not fit."""
    if device.type != "cuda":
        return None
    info = info or DistInfo()
    mine = samples[info.rank :: info.world]
    need = sum(s.image.nbytes + s.mask.nbytes for s in mine)
    if need > share * torch.cuda.mem_get_info(device)[0]:
        return None
    return [(x.to(device), y.to(device), names) for x, y, names in eval_batches(mine, batch_size)]
