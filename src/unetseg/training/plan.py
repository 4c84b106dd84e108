"""Dataset-driven configuration: from the data's fingerprint and the device, choose the training settings.

Like nnU-Net's fingerprint -> plan, for 2-D: image sizes, channels, intensity range and class frequencies, plus the
device's memory and speed, decide patch size, batch size, width, class weights and the number of epochs that fit a
time budget. Every choice comes with its reason, and any option given on the command line wins over the plan.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unetseg.data.prepare import Dataset, class_frequencies

# Activation memory of the U-Net in training with bf16 autocast, per pixel and per unit of width, measured from
# Pytorch-UNet's --amp peak (14.7 GiB for 8 images of 959x640 at width 64): about 50 bytes.
BYTES_PER_PIXEL_PER_WIDTH = 14.7 * 2**30 / (8 * 959 * 640 * 64)
GPU_MEMORY_SHARE = 0.6  # leave room for the allocator, cuDNN workspaces and validation
RARE_CLASS_SHARE = 0.05  # below this pixel share, weight the loss toward the class
UNTIL_BUDGET = 100_000  # epochs under a time budget: the budget, not a count, ends the run
VALIDATION_SHARE = 0.1  # validation rounds should cost about this share of the training time
CPU_SMALL_BUDGET_S = 30 * 60  # below this budget a CPU trains the narrow U-Net (more steps in the time)


def _patch(data: Dataset, gpu: bool) -> tuple[int | None, str]:
    """Whole images when they all share one size that fits; otherwise square crops near the median short side."""
    whole, crop = (1024, 512) if gpu else (256, 256)
    sizes = np.array([s.image.shape[:2] for s in data.train])
    if len({tuple(s) for s in sizes}) == 1 and sizes[0].max() <= whole:
        return None, f"all images are {sizes[0][1]}x{sizes[0][0]}: train on whole images"
    median = int(np.median(sizes.min(axis=1)))
    patch = max(64, min(crop, median // 32 * 32 or 64))
    return patch, f"median short side {median} px, capped at {crop} on this device: {patch}x{patch} crops"


def _width(gpu: bool, budget_s: float | None) -> tuple[int, str]:
    if gpu:
        return 64, "64, the classic U-Net, on a GPU"
    if budget_s is not None and budget_s < CPU_SMALL_BUDGET_S:
        return 16, (
            f"16 on a CPU for a budget under {CPU_SMALL_BUDGET_S / 60:.0f} min: about 3x the steps of width 32 "
            "in the same time, which scored higher in short runs (benchmarks/README.md)"
        )
    return 32, "32 on a CPU, where bf16 trains it about 4x faster than width 64 (benchmarks/README.md)"


def _validation(data: Dataset, batch: int, patch: tuple[int, int], gpu: bool) -> tuple[int, int, str]:
    """(rounds per epoch, epochs between rounds, why): whole-image validation kept near 10% of the training time.

    Estimated from the pixels alone, with no measurement: a validation pixel costs about a third of a training
    pixel on a CPU, and about half on a GPU, where the training step is compiled and validation is not
    (benchmarks/README.md).
    """
    val_pixels = sum(s.image.shape[0] * s.image.shape[1] for s in data.val)
    epoch_pixels = max(1, len(data.train) // batch) * batch * patch[0] * patch[1]
    share = val_pixels / ((2 if gpu else 3) * epoch_pixels)
    if not data.val or share <= VALIDATION_SHARE:
        rounds = max(1, min(5, int(VALIDATION_SHARE / max(share, 1e-9))))
        return rounds, 1, f"a round costs about {share:.0%} of an epoch: {rounds} per epoch"
    every = math.ceil(share / VALIDATION_SHARE)
    return 1, every, f"a round costs about {share:.0%} of an epoch: one every {every} epochs"


def _batch(device: torch.device, pixels: int, width: int) -> tuple[int, str]:
    if device.type != "cuda":
        return 8, "8 keeps BatchNorm statistics stable; larger batches only slow each step on a CPU"
    free, _ = torch.cuda.mem_get_info(device)
    per_image = pixels * width * BYTES_PER_PIXEL_PER_WIDTH
    batch = int(max(2, min(32, GPU_MEMORY_SHARE * free // per_image)))
    return batch, f"{free / 2**30:.0f} GiB free, about {per_image / 2**30:.2f} GiB per image: batch {batch}"


def make_plan(
    data: Dataset, device: torch.device, time_budget_s: float | None = None, fixed: dict | None = None
) -> list[tuple[str, object, str]]:
    """(option, value, reason) for each planned choice.

    ``fixed`` holds the options the user gave (name -> value); the plan adapts to them where a choice depends on
    them (e.g. --epochs without a time budget asks for a score after every epoch).
    """
    fixed = fixed or {}
    gpu = device.type == "cuda"
    plan: list[tuple[str, object, str]] = []
    # The user's own patch size, width and batch are constraints: what depends on them is planned for them.
    patch, why = _patch(data, gpu)
    plan.append(("patch_size", patch, why))
    patch = fixed.get("patch_size", patch)
    width, why = _width(gpu, time_budget_s)
    plan.append(("width", width, why))
    width = fixed.get("width", width)
    shape = (patch, patch) if patch else data.train[0].image.shape[:2]
    batch, why = _batch(device, shape[0] * shape[1], width)
    plan.append(("batch_size", batch, why))
    batch = fixed.get("batch_size", batch)
    freq = class_frequencies(data.train, data.class_map.num_classes)
    rare = [n for n, f in zip(data.class_map.names, freq) if f < RARE_CLASS_SHARE]
    weights = "auto" if rare else "none"
    plan.append(
        (
            "class_weights",
            weights,
            f"{', '.join(rare)} below {RARE_CLASS_SHARE:.0%} of pixels" if rare else "no class below 5% of pixels",
        )
    )
    top = data.norm["scale"]
    plan.append(
        (
            "normalisation",
            "per-channel z-score",
            f"values / {top:g} (the data's range), then mean {data.norm['mean']} and std {data.norm['std']}",
        )
    )
    rounds, every, why = _validation(data, batch, shape, gpu)
    if every > 1 and fixed.get("epochs") and not time_budget_s and "val_every" not in fixed:
        # A run of a few fixed epochs must report a score each epoch; "one every N epochs" could leave one round.
        every, why = 1, f"validate after every epoch: --epochs {fixed['epochs']} given without a time budget"
    plan.append(("val_rounds", rounds, why))
    plan.append(("val_every", every, "validate after every epoch" if every == 1 else why))
    if time_budget_s:
        steps_per_epoch = max(1, len(data.train) // batch)
        plan.append(
            (
                "epochs",
                UNTIL_BUDGET,
                f"until the {time_budget_s:.0f} s budget ends the run (the schedule follows the clock), "
                f"epochs of {steps_per_epoch} steps",
            )
        )
    return plan
