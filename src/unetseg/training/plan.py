"""Dataset-driven configuration: from the data's fingerprint and the device, choose the training settings.

Like nnU-Net's fingerprint -> plan, for 2-D: image sizes, channels, intensity range and class frequencies, plus the
device's memory and speed, decide patch size, batch size, width, class weights and the number of epochs that fit a
time budget. Every choice comes with its reason, and any option given on the command line wins over the plan.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unetseg.data.prepare import Dataset, class_frequencies, class_presence
from unetseg.data.samples import scaled_size
from unetseg.data.shapes import Shapes, measure
from unetseg.evaluation.choice import choose_score
from unetseg.train_config import FOREGROUND_CROPS, RARE_CLASS_SHARE, RARE_IMAGE_SHARE

# Activation memory of the U-Net in training with bf16 autocast, per pixel and per unit of width, measured from
# Pytorch-UNet's --amp peak (14.7 GiB for 8 images of 959x640 at width 64): about 50 bytes.
BYTES_PER_PIXEL_PER_WIDTH = 14.7 * 2**30 / (8 * 959 * 640 * 64)
GPU_MEMORY_SHARE = 0.6  # leave room for the allocator, cuDNN workspaces and validation
UNTIL_BUDGET = 100_000  # epochs under a time budget: the budget, not a count, ends the run
VALIDATION_SHARE = 0.1  # validation rounds should cost about this share of the training time
CPU_SMALL_BUDGET_S = 30 * 60  # below this budget a CPU trains the narrow U-Net (more steps in the time)
# Training resolution. Structures keep at least DETAIL_PX of thickness (a thinner line is lost to the resize: a
# 5 px membrane at half size lost Dice; a 9 px crop plant at half size scored no worse than at full resolution,
# in single runs whose spread was larger than the difference; benchmarks/README.md); images
# keep a short side of MIN_SIDE_PX (below it a U-Net's four poolings leave no context); and on a budget the
# resolution drops until it affords TARGET_EPOCHS passes over the data at about PIXELS_PER_S training pixels a
# second. A whole image at half size, seen 40 times, teaches an object's shape better than a few full-size crops.
DETAIL_PX = 5
# A class under THIN_PX thick is a thin structure for augmentation and crops (see below), whatever the resolution.
THIN_PX = 16
# Objects thicker than CONTEXT_PX (a disc of about 90 px) outgrow what the U-Net's four poolings see around a pixel:
# at a lower resolution the whole object falls inside it, and each step costs less.
CONTEXT_PX = 56
DETAIL_SHARE = 0.01  # classes rarer than this do not hold the resolution up (rare-class sampling serves them)
MIN_SIDE_PX = 112
TARGET_EPOCHS = 40
# Passes are not enough where images are few: 40 passes over 45 images are 225 steps, and a U-Net from scratch is
# far from converged after a few hundred (the bundled sample: 0.82 after 294 steps, 0.91 after 1111; nuclei fold 0
# in 5 minutes: 0.883 on full-size 256x256 crops, 0.901 on half-size 128x128 ones; benchmarks/README.md). The
# budget's resolution also affords MIN_STEPS steps of STEP_IMAGES images.
MIN_STEPS = 2000
STEP_IMAGES = 8
PIXELS_PER_S = {"cpu": 4e5, "cuda": 2e7}  # the width-16 U-Net on 2 CPU cores with bf16; the width-64 one on a GPU
# Augmentation stands in for images a dataset lacks. With many images and a budget of few passes over them, each
# image is seen too few times for random warps and colour changes to pay; the budget goes to convergence instead.
# Thin structures (the thinnest common class under THIN_PX) train on light augmentation and uniform crops: a warp's
# resampling, blur and noise erase a line a few pixels wide, and crops centred on it over-teach it (benchmarks/README).
MANY_IMAGES = 150
FEW_EPOCHS = 50
UPRIGHT_BALANCE = 0.5  # a class this much more often in one half of the image than the other marks an up and down
UPRIGHT_TILT = 0.5  # or images whose top third is this many standard deviations brighter or darker than the bottom
# Where the rules are unsure (a resolution traded for epochs, the learning rate of a model trained from scratch),
# short pilot runs decide: PILOT_SHARE of the budget, split between the candidates, each at least MIN_PILOT_S.
PILOT_SHARE = 0.2
MIN_PILOT_S = 40.0
PILOT_SCALE_STEP = 1.5  # the pilot's higher resolution: 1.5x the planned one (0.5 -> 0.75)
PILOT_LR_FACTOR = 3.0
LEARNING_RATES = {"adamw": 1e-3, "adam": 1e-3, "sgd": 1e-2, "rmsprop": 1e-5}
ENCODER_LR_SCALE = 0.1  # a pretrained encoder's rate relative to the decoder's (discriminative fine-tuning)


def _scale(
    data: Dataset, shapes: Shapes, device: str, budget_s: float | None, fixed: dict
) -> tuple[float, str, float | None]:
    """The training resolution: as low as the thinnest common structure, the context and the budget allow; and a
    higher one to try in a pilot where the budget or the objects' size, not a limit, set it (None: none)."""
    thinnest, which = _thinnest(data, shapes)
    detail = DETAIL_PX / thinnest
    side = MIN_SIDE_PX / max(shapes.short_side, 1)
    objects = _object_thickness(data, shapes)
    context = CONTEXT_PX / objects if objects else 1.0
    reasons = [f"median short side {shapes.short_side} px (keep {MIN_SIDE_PX}: {side:.2f})"]
    if which:
        reasons.insert(0, f"thinnest common class {which} is {thinnest:.0f} px thick (keep {DETAIL_PX}: {detail:.2f})")
    if objects:
        reasons.append(f"objects {objects:.0f} px thick (fit {CONTEXT_PX}: {context:.2f})")
    speed = 1.0
    if budget_s:
        # Pixels scale with the square of the resolution: the scale that turns these epochs into the passes needed.
        count = max(len(data.train), 1)
        needed = max(TARGET_EPOCHS, MIN_STEPS * STEP_IMAGES / count)
        speed = math.sqrt(_epochs(device, budget_s, count, shapes.pixels) / needed)
        if needed > TARGET_EPOCHS:
            reasons.append(f"{MIN_STEPS} steps of {STEP_IMAGES} of {count} images in the budget need {speed:.2f}")
        else:
            reasons.append(f"{TARGET_EPOCHS} epochs in the budget need {speed:.2f}")
    # Lower for large objects or for the budget, but never below what thin structures and context need.
    floor = max(detail, side)
    scale = _rounded(min(1.0, max(floor, min(context, speed))))
    why = ", ".join(reasons)
    if fixed.get("patch_size") and scale < 1:
        return 1.0, f"--patch-size given: crops at the images' own resolution ({why})", None
    # A trade of resolution for context or for epochs is a judgement, not a limit: a pilot tries a step higher.
    higher = _rounded(min(1.0, scale * PILOT_SCALE_STEP)) if scale < 1 and floor < min(context, speed) else None
    return scale, (f"{why}: train at {scale:g} of the size" if scale < 1 else f"{why}: full resolution"), higher


def _thinnest(data: Dataset, shapes: Shapes) -> tuple[float, str]:
    """Thickness (px) and name of the thinnest class with at least DETAIL_SHARE of the pixels; (inf, "") if none."""
    names = data.class_map.names
    main = [(c.thickness, n) for c, n in zip(shapes.classes, names) if c.share >= DETAIL_SHARE and c.thickness]
    return min(main) if main else (float("inf"), "")


def _thin_structure(data: Dataset, shapes: Shapes) -> str:
    """ "crop is 9 px thick" when the thinnest common class is under THIN_PX thick; else ""."""
    thinnest, which = _thinnest(data, shapes)
    return f"{which} is {thinnest:.0f} px thick" if thinnest < THIN_PX else ""


def _rounded(scale: float) -> float:
    """Scales in eighths; 1.0 where that rounds to 7/8 or more: such a resize would save little and blur the masks."""
    eighths = round(scale * 8) / 8
    return 1.0 if eighths >= 0.875 else max(0.125, eighths)


def _object_thickness(data: Dataset, shapes: Shapes) -> float:
    """Pixel-share-weighted thickness of the classes that are objects (all but a background class 0)."""
    first = 1 if choose_score(data.class_map).kind == "foreground" else 0
    kept = [c for c in shapes.classes[first:] if c.share >= DETAIL_SHARE and c.thickness]
    total = sum(c.share for c in kept)
    return sum(c.share * c.thickness for c in kept) / total if total else 0.0


def _flips(data: Dataset, shapes: Shapes) -> tuple[str, str]:
    """Horizontal flips only where the data has an up and a down (sky above, road below)."""
    common = [(abs(c.vertical), n) for c, n in zip(shapes.classes, data.class_map.names) if c.share >= DETAIL_SHARE]
    balance, which = max(common) if common else (0.0, "")
    if balance >= UPRIGHT_BALANCE:
        share = (1 + balance) / 2
        return "horizontal", f"{share:.0%} of {which} lies in one half of the images: they have an up and a down"
    if shapes.intensity_tilt >= UPRIGHT_TILT:
        return "horizontal", (
            f"the images' top and bottom thirds differ by {shapes.intensity_tilt:.1f} standard deviations: "
            "they have an up and a down"
        )
    return "all", "no class or brightness prefers the top or the bottom of the images: every orientation"


def _epochs(device: str, budget_s: float, images: int, pixels: int) -> float:
    """Passes over ``images`` training images of ``pixels`` pixels that ``budget_s`` affords on ``device``."""
    return PIXELS_PER_S[device] * budget_s / (max(images, 1) * max(pixels, 1))


def _augment(data: Dataset, thin: str, device: str, budget_s: float | None, pixels: int) -> tuple[str, str]:
    """``light`` for a ``thin`` structure (see _thin_structure), or for many images and a budget of few epochs;
    else ``default``."""
    count = len(data.train)
    if thin:
        return "light", f"{thin}: warps resample it, blur and noise erase it; flips and mild intensity only"
    if not budget_s:
        return "default", "no time budget: the epochs are yours to choose"
    epochs = _epochs(device, budget_s, count, pixels)
    if count >= MANY_IMAGES and epochs < FEW_EPOCHS:
        return "light", (
            f"{count} images and about {epochs:.0f} epochs in the budget: each image is seen too few times for "
            "warps and colour changes to pay, flips and mild intensity only"
        )
    reason = f"fewer than {MANY_IMAGES} images" if count < MANY_IMAGES else f"about {epochs:.0f} epochs in the budget"
    return "default", f"{reason}: random scale/rotation/shift and intensity changes stand in for more data"


def _foreground_crops(thin: str) -> tuple[float, str]:
    """Uniform crops for a ``thin`` structure (see _thin_structure); else FOREGROUND_CROPS of them centred on a
    foreground class."""
    if thin:
        return 0.0, (
            f"{thin}: uniform crops (crops centred on a class would show a thin structure several times as often as "
            "the data holds it, and the model learns to draw too much of it)"
        )
    return FOREGROUND_CROPS, (
        f"{FOREGROUND_CROPS:.0%} of the crops centred on a foreground pixel, class by class (nnU-Net's choice), "
        "so small and rare objects are seen"
    )


def _listed(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _class_weights(data: Dataset, freq: np.ndarray, held: np.ndarray) -> tuple[str, str]:
    """``auto`` when a class is rare both in pixels (under RARE_CLASS_SHARE) and in images (held by under
    RARE_IMAGE_SHARE of them): such a class is in few batches, and its few pixels must count for more to be
    learnt at all. A class with few pixels in most images is in every batch already; weighing it up makes it grow
    into the classes beside it (a crop plant into the weeds around it)."""
    names = data.class_map.names
    rare = [
        f"{n} ({f:.1%} of pixels, {h:.0%} of images)"
        for n, f, h in zip(names, freq, held)
        if f < RARE_CLASS_SHARE and h < RARE_IMAGE_SHARE
    ]
    if rare:
        return "auto", f"{_listed(rare)}: rare in pixels and in images"
    small = [f"{n} ({f:.1%})" for n, f in zip(names, freq) if f < RARE_CLASS_SHARE]
    if small:
        return "none", (
            f"{_listed(small)} below {RARE_CLASS_SHARE:.0%} of pixels but in at least {RARE_IMAGE_SHARE:.0%} of "
            "the images: seen in every batch, and weighed up it grows into the classes beside it"
        )
    return "none", f"no class below {RARE_CLASS_SHARE:.0%} of pixels"


def _patch(data: Dataset, gpu: bool, scale: float) -> tuple[int | None, str]:
    """Whole images when they all share one size that fits; otherwise square crops of the median short side
    (rounded up, so a downscaled image is almost whole in its crop)."""
    whole, crop = (1024, 512) if gpu else (256, 256)
    sizes = np.array([scaled_size(*s.image.shape[:2], scale) for s in data.train])
    if len({tuple(s) for s in sizes}) == 1 and sizes[0].max() <= whole:
        return None, f"all images are {sizes[0][1]}x{sizes[0][0]} at this scale: train on whole images"
    median = int(np.median(sizes.min(axis=1)))
    patch = max(64, min(crop, math.ceil(median / 32) * 32))
    return patch, f"median short side {median} px at this scale, capped at {crop} on this device: {patch}x{patch} crops"


def _width(gpu: bool, budget_s: float | None) -> tuple[int, str]:
    if gpu:
        return 64, "64, the classic U-Net, on a GPU"
    if budget_s is not None and budget_s < CPU_SMALL_BUDGET_S:
        return 16, (
            f"16 on a CPU for a budget under {CPU_SMALL_BUDGET_S / 60:.0f} min: about 3x the steps of width 32 "
            "in the same time, which scored higher in short runs (benchmarks/README.md)"
        )
    return 32, "32 on a CPU, where bf16 trains it about 4x faster than width 64 (benchmarks/README.md)"


def _validation(
    data: Dataset, batch: int, patch: tuple[int, int], gpu: bool, scale: float = 1.0
) -> tuple[int, int, str]:
    """(rounds per epoch, epochs between rounds, why): whole-image validation kept near 10% of the training time.

    Estimated from the pixels alone, with no measurement: a validation pixel costs about a third of a training
    pixel on a CPU, and about half on a GPU, where the training step is compiled and validation is not
    (benchmarks/README.md).
    """
    val_pixels = scale**2 * sum(s.image.shape[0] * s.image.shape[1] for s in data.val)
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


def _learning_rate(optimizer: str, pretrained: bool) -> tuple[float, str, float | None]:
    """The optimizer's usual peak rate, and a higher one for a pilot where the model learns from scratch."""
    lr = LEARNING_RATES[optimizer]
    why = f"{lr:g} is {optimizer}'s usual peak rate for a U-Net"
    if pretrained or optimizer not in ("adamw", "adam"):
        return lr, why + (" (the weights start trained: no higher rate tried)" if pretrained else ""), None
    return lr, why + f"; from scratch {PILOT_LR_FACTOR:g}x may converge faster in a short run", lr * PILOT_LR_FACTOR


def _model(encoder_weights: bool, gpu: bool) -> tuple[str, str]:
    """The classic U-Net, unless pretrained encoder weights ask for a ResNet encoder."""
    if encoder_weights:
        return "unet-resnet34", "--encoder-weights given: the ResNet-34 U-Net (smp's default encoder) takes them"
    if gpu:
        return "unet", "the classic U-Net (Pytorch-UNet's); the registry's models are not yet compared on a GPU"
    return "unet", (
        "the classic U-Net: from scratch in 2 minutes on a 2-core CPU it scored 0.71 on nuclei and 0.41 on cracks; "
        "of the other models only unet-resnet18 came close (0.67, 0.43), in single noisy runs (benchmarks/README.md)"
    )


def _encoder_lr_scale(encoder_weights: bool) -> tuple[float, str]:
    if encoder_weights:
        return ENCODER_LR_SCALE, (
            f"pretrained encoder: it learns at {ENCODER_LR_SCALE:g}x the rate, so that the random decoder's first "
            "large gradients do not wreck its features"
        )
    return 1.0, "no pretrained encoder: one rate for every layer"


def pilot_seconds(budget_s: float, candidates: int) -> float:
    """Each pilot's share of the budget: PILOT_SHARE of it split between the candidates."""
    return PILOT_SHARE * budget_s / max(candidates, 1)


def _pilots(budget_s: float | None, alternatives: list[str], fixed: dict, has_val: bool) -> tuple[str, str]:
    """The candidates for pilot runs, ``planned | opt=value ... | ...``, or ``none``; and why."""
    if not alternatives:
        return "none", "the rules leave no choice open"
    if not fixed.get("pilot", True):
        return "none", "--no-pilot given"
    if fixed.get("folds") or fixed.get("nproc"):
        return "none", "cross-validation and multi-process runs train the plan's first choice"
    if not budget_s or fixed.get("max_steps") or not has_val:
        return "none", "pilots need a time budget to share and a validation split to score on"
    while alternatives and pilot_seconds(budget_s, len(alternatives) + 1) < MIN_PILOT_S:
        alternatives = alternatives[:-1]  # dropped from the end: the resolution's alternative is kept longest
    if not alternatives:
        return "none", f"{PILOT_SHARE:.0%} of the budget leaves under {MIN_PILOT_S} s per pilot: the plan is kept"
    count = len(alternatives) + 1
    return " | ".join(["planned", *alternatives]), (
        f"{count} pilots of {pilot_seconds(budget_s, count):.0f} s ({PILOT_SHARE:.0%} of the budget), scored on "
        "the validation split; the winner continues from its weights for the rest of the budget"
    )


def _resolution(
    data: Dataset, thin: str, device: torch.device, budget_s: float | None, fixed: dict, scale: float, width: int
) -> list[tuple[str, object, str]]:
    """The choices that follow from the training resolution: crops, batch, augmentation, validation schedule;
    ``thin`` as _thin_structure says."""
    gpu = device.type == "cuda"
    rows: list[tuple[str, object, str]] = []
    # The data arrive at the user's scale when one was given, at full resolution otherwise.
    at = 1.0 if "scale" in fixed else scale
    patch, why = _patch(data, gpu, at)
    rows.append(("patch_size", patch, why))
    patch = fixed.get("patch_size", patch)
    shape = (patch, patch) if patch else scaled_size(*data.train[0].image.shape[:2], at)
    batch, why = _batch(device, shape[0] * shape[1], width)
    rows.append(("batch_size", batch, why))
    batch = fixed.get("batch_size", batch)
    augment, why = _augment(data, thin, "cuda" if gpu else "cpu", budget_s, shape[0] * shape[1])
    rows.append(("augment", augment, why))
    crops, why = _foreground_crops(thin)
    rows.append(("foreground_crops", crops, why))
    rounds, every, why = _validation(data, batch, shape, gpu, at)
    if every > 1 and fixed.get("epochs") and not budget_s and "val_every" not in fixed:
        # A run of a few fixed epochs must report a score each epoch; "one every N epochs" could leave one round.
        every, why = 1, f"validate after every epoch: --epochs {fixed['epochs']} given without a time budget"
    rows.append(("val_rounds", rounds, why))
    rows.append(("val_every", every, "validate after every epoch" if every == 1 else why))
    if budget_s:
        steps_per_epoch = max(1, len(data.train) // batch)
        rows.append(
            (
                "epochs",
                UNTIL_BUDGET,
                f"until the {budget_s:.0f} s budget ends the run (the schedule follows the clock), "
                f"epochs of {steps_per_epoch} steps",
            )
        )
    return rows


def make_plan(
    data: Dataset, device: torch.device, time_budget_s: float | None = None, fixed: dict | None = None
) -> list[tuple[str, object, str]]:
    """(option, value, reason) for each planned choice.

    ``fixed`` holds the options the user gave (name -> value); the plan adapts to them where a choice depends on
    them (e.g. --epochs without a time budget asks for a score after every epoch). Where the rules are unsure, the
    ``pilots`` row names the alternatives that short pilot runs try (``unetseg train`` runs them).
    """
    fixed = fixed or {}
    gpu = device.type == "cuda"
    plan: list[tuple[str, object, str]] = []
    shapes = measure(data.train, data.class_map.num_classes)
    # The user's own scale, patch size, width and batch are constraints: what depends on them is planned for them.
    scale, why, higher = _scale(data, shapes, "cuda" if gpu else "cpu", time_budget_s, fixed)
    plan.append(("scale", scale, why))
    flips, why = _flips(data, shapes)
    plan.append(("flips", flips, why))
    encoder_weights = fixed.get("encoder_weights", "none") != "none"  # a pretrained encoder
    model, why = _model(encoder_weights, gpu)
    plan.append(("model", model, why))
    width, why = _width(gpu, time_budget_s)
    plan.append(("width", width, why))
    width = fixed.get("width", width)
    lr, why, faster = _learning_rate(fixed.get("optimizer", "adamw"), encoder_weights or bool(fixed.get("load")))
    plan.append(("learning_rate", lr, why))
    scale_lr, why = _encoder_lr_scale(encoder_weights)
    plan.append(("encoder_lr_scale", scale_lr, why))
    thin = _thin_structure(data, shapes)
    resolution = _resolution(data, thin, device, time_budget_s, fixed, scale, width)
    plan += resolution
    k = data.class_map.num_classes
    held = class_presence(data.train, k).mean(axis=0) if data.train else np.ones(k)
    plan.append(("class_weights", *_class_weights(data, class_frequencies(data.train, k), held)))
    top = data.norm["scale"]
    plan.append(
        (
            "normalisation",
            "per-channel z-score",
            f"values / {top:g} (the data's range), then mean {data.norm['mean']} and std {data.norm['std']}",
        )
    )
    alternatives = []
    if higher and "scale" not in fixed:
        # The higher resolution with what follows from it (crops, augmentation, validation), where not given.
        follows = _resolution(data, thin, device, time_budget_s, fixed, higher, width)
        changed = {"scale": higher} | {
            n: v for (n, v, _), (_, old, _) in zip(follows, resolution) if v != old and n not in fixed
        }
        alternatives.append(" ".join(f"{n}={v}" for n, v in changed.items()))
    if faster and "learning_rate" not in fixed:
        alternatives.append(f"learning_rate={faster:g}")
    pilots, why = _pilots(time_budget_s, alternatives, fixed, bool(data.val))
    plan.append(("pilots", pilots, why))
    return plan
