"""Paired image/mask augmentation on the device, batched.

Images arrive as floats in [0, 1] ``(B, C, H, W)`` (before normalisation, so gamma and contrast have their usual
meaning); masks as int64 class indices ``(B, H, W)``. Geometry moves both (bilinear for images, nearest for masks;
pixels from outside the patch become ``IGNORE_INDEX`` in the mask); intensity changes touch images only.

Every random decision is drawn on the CPU from one seed for a global batch, of which this process takes its slice,
so a resumed run, and N processes sharing a global batch, make exactly the decisions of one uninterrupted process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.errors import UserError


@dataclass(frozen=True)
class AugmentSpec:
    """Probabilities and ranges of each transform (one preset per ``--augment`` name)."""

    flips: bool = True  # horizontal and vertical flips, and 90-degree turns of square patches
    upright: bool = False  # horizontal flips only: for photos and scenes, which have an up and a down
    affine_p: float = 0.0  # share of samples given a random scale/rotation/shift
    scale: tuple[float, float] = (0.8, 1.25)
    rotate_deg: float = 15.0
    shift: float = 0.1  # share of the patch size
    elastic_p: float = 0.0
    elastic_alpha: float = 0.03  # displacement as a share of the patch size
    intensity_p: float = 0.0  # brightness and contrast
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.75, 1.25)
    gamma_p: float = 0.0
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_p: float = 0.0
    noise_std: float = 0.05
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)


PRESETS: dict[str, AugmentSpec | None] = {
    "none": None,
    "flips": AugmentSpec(),
    "light": AugmentSpec(intensity_p=0.3, brightness=0.05, contrast=(0.9, 1.1)),
    "default": AugmentSpec(affine_p=0.3, intensity_p=0.5, gamma_p=0.3, noise_p=0.15, blur_p=0.1),
    "heavy": AugmentSpec(
        affine_p=0.6,
        scale=(0.7, 1.4),
        rotate_deg=30,
        elastic_p=0.3,
        intensity_p=0.7,
        brightness=0.2,
        contrast=(0.6, 1.4),
        gamma_p=0.5,
        noise_p=0.3,
        blur_p=0.2,
    ),
}


FLIPS = ("all", "horizontal")  # --flips: every orientation, or only left-right mirror images


def get_spec(name: str, flips: str = "all") -> AugmentSpec | None:
    """The ``--augment`` preset, with ``--flips horizontal`` keeping images upright (no vertical flip, no turn)."""
    if name not in PRESETS:
        raise UserError(f"--augment {name}: unknown preset; known: {', '.join(PRESETS)}")
    spec = PRESETS[name]
    return replace(spec, upright=True) if spec is not None and flips == "horizontal" else spec


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def draw(spec: AugmentSpec, total: int, seed: int) -> dict[str, torch.Tensor]:
    """All random parameters for a global batch of ``total`` samples, as CPU tensors with ``total`` rows."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "flip": torch.rand(total, 3, generator=gen) < 0.5,  # hflip, vflip, rot90
        "affine": torch.rand(total, generator=gen) < spec.affine_p,
        "scale": torch.exp(_uniform(gen, total, math.log(spec.scale[0]), math.log(spec.scale[1]))),
        "angle": _uniform(gen, total, -spec.rotate_deg, spec.rotate_deg) * math.pi / 180,
        "shift": _uniform(gen, 2 * total, -spec.shift, spec.shift).view(total, 2) * 2,  # grid units span 2
        "elastic": torch.rand(total, generator=gen) < spec.elastic_p,
        "sample_seed": torch.randint(0, 2**31 - 1, (total,), generator=gen),  # noise and elastic fields
        "intensity": torch.rand(total, generator=gen) < spec.intensity_p,
        "brightness": _uniform(gen, total, -spec.brightness, spec.brightness),
        "contrast": _uniform(gen, total, *spec.contrast),
        "gamma_on": torch.rand(total, generator=gen) < spec.gamma_p,
        "gamma": torch.exp(_uniform(gen, total, math.log(spec.gamma[0]), math.log(spec.gamma[1]))),
        "noise": (torch.rand(total, generator=gen) < spec.noise_p) * _uniform(gen, total, 0, spec.noise_std),
        "blur": torch.rand(total, generator=gen) < spec.blur_p,
        "sigma": _uniform(gen, total, *spec.blur_sigma),
    }


def _select(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per sample: ``new`` where ``mask`` (already on the device), else ``old``."""
    shape = (-1,) + (1,) * (old.dim() - 1)
    return torch.where(mask.view(shape), new, old)


def _to_device(params: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """All per-sample parameters in one pinned, non-blocking copy (a plain copy per tensor would sync a GPU)."""
    if device.type == "cpu":
        return dict(params)
    names = list(params)
    packed = torch.cat([params[n].float().reshape(len(params[n]), -1) for n in names], dim=1)
    packed = packed.pin_memory().to(device, non_blocking=True)
    out, column = {}, 0
    for n in names:
        width = params[n].reshape(len(params[n]), -1).shape[1]
        value = packed[:, column : column + width].reshape(params[n].shape)
        out[n] = value.bool() if params[n].dtype == torch.bool else value
        column += width
    return out


def _flips(
    x: torch.Tensor, y: torch.Tensor, flip: torch.Tensor, upright: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _select(flip[:, 0], x.flip(-1), x), _select(flip[:, 0], y.flip(-1), y)
    if upright:
        return x, y
    x, y = _select(flip[:, 1], x.flip(-2), x), _select(flip[:, 1], y.flip(-2), y)
    if x.shape[-1] == x.shape[-2]:
        x = _select(flip[:, 2], x.rot90(1, (-2, -1)), x)
        y = _select(flip[:, 2], y.rot90(1, (-2, -1)), y)
    return x, y


def _geometry(
    x: torch.Tensor, y: torch.Tensor, p: dict, d: dict, spec: AugmentSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine (and elastic) warps of the selected samples, images bilinear and masks nearest.

    ``p`` holds the parameters on the host (to build the warp), ``d`` the same on the device (to select samples).
    """
    b, _, h, w = x.shape
    device = x.device
    cos, sin = torch.cos(p["angle"]) / p["scale"], torch.sin(p["angle"]) / p["scale"]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin * h / w, sin * w / h, cos
    theta[:, :, 2] = p["shift"]
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(b, 2, 3)
    theta = torch.where(p["affine"].view(-1, 1, 1), theta, identity)
    theta = theta.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else theta
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, H, W, 2)
    if p["elastic"].any():
        coarse_shape = (2, max(h // 32, 2), max(w // 32, 2))
        coarse = torch.stack([_randn(coarse_shape, int(s)) for s in p["sample_seed"]]) * spec.elastic_alpha * 2
        coarse = coarse * p["elastic"].view(-1, 1, 1, 1)
        coarse = coarse.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else coarse
        grid = grid + F.interpolate(coarse, (h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    moved = d["affine"] | d["elastic"]
    warped = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)
    labels = F.grid_sample(y.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones_like(labels), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    labels = torch.where(inside > 0.5, labels, torch.full_like(labels, IGNORE_INDEX)).squeeze(1).long()
    return _select(moved, warped, x), _select(moved, labels, y)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur with a 5x5 kernel, as one grouped convolution (``sigma`` on the device)."""
    b, c = x.shape[:2]
    r = torch.arange(-2, 3, dtype=torch.float32, device=x.device)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # (B, 5)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, 0)[:, None]  # (B*C, 1, 5, 5)
    out = F.conv2d(F.pad(x.reshape(1, b * c, *x.shape[2:]), (2, 2, 2, 2), mode="reflect"), k2.to(x), groups=b * c)
    return out.view_as(x)


def _randn(shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normal noise from its own seed, drawn on ``device`` (repeatable per device type)."""
    return torch.randn(shape, generator=torch.Generator(device=device).manual_seed(seed), device=device)


def _intensity(x: torch.Tensor, p: dict, d: dict) -> torch.Tensor:
    """Contrast, brightness, gamma, blur and noise; ``p`` on the host (branching), ``d`` on the device."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    shape = (-1, 1, 1, 1)
    changed = (x - mean) * d["contrast"].view(shape) + mean + d["brightness"].view(shape)
    x = _select(d["intensity"], changed, x).clamp(0, 1)
    x = _select(d["gamma_on"], x.clamp_min(1e-6) ** d["gamma"].view(shape), x)
    if p["blur"].any():
        x = _select(d["blur"], _blur(x, d["sigma"]), x)
    if p["noise"].any():
        drawn = [
            _randn(x.shape[1:], int(s), x.device) if on else torch.zeros_like(x[0])
            for s, on in zip(p["sample_seed"], p["noise"] > 0)
        ]
        x = (x + torch.stack(drawn) * d["noise"].view(shape)).clamp(0, 1)
    return x


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    seed: int,
    offset: int = 0,
    total: int | None = None,
    spec: AugmentSpec | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images in [0, 1] ``(B, C, H, W)`` and masks ``(B, H, W)`` of one process's slice of a global batch."""
    spec = spec or AugmentSpec()
    batch = images.shape[0]
    params = {k: v[offset : offset + batch] for k, v in draw(spec, total or batch, seed).items()}
    on_device = _to_device({k: v for k, v in params.items() if k != "sample_seed"}, images.device)
    channels_last = images.is_contiguous(memory_format=torch.channels_last)
    x, y = images, masks
    if spec.flips:
        x, y = _flips(x, y, on_device["flip"], spec.upright)
    if (params["affine"] | params["elastic"]).any():
        x, y = _geometry(x, y, params, on_device, spec)
    if spec.intensity_p or spec.gamma_p or spec.noise_p or spec.blur_p:
        x = _intensity(x, params, on_device)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()), y.contiguous()
