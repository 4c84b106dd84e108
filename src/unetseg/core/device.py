"""Device and numeric precision, chosen once up front."""

from __future__ import annotations

import contextlib
import functools

import torch

from unetseg.core.meta import Norm
from unetseg.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def fast_bf16(device: torch.device) -> bool:
    """True where bf16 has native support: CUDA GPUs from Ampere on, CPUs with AVX-512 bf16 / AMX.

    On such CPUs bf16 autocast trains a U-Net about 3x faster than fp32 (benchmarks/README.md).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def choose_dtype(precision: str, amp: bool, device: torch.device) -> torch.dtype:
    """The autocast dtype: fp32 means no autocast. ``--amp`` asks for bf16 where supported, else fp16.

    ``auto`` is bf16 where the hardware runs it natively (faster, and unlike fp16 it needs no grad scaler), else fp32.
    """
    if amp and precision in ("auto", "fp32"):
        return torch.bfloat16 if fast_bf16(device) or device.type == "cpu" else torch.float16
    if precision == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("--precision fp16 is not supported on the CPU; use bf16 or fp32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast context for ``dtype``; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_unit(images: torch.Tensor, norm: Norm, device: torch.device) -> torch.Tensor:
    """uint8/uint16 ``(B, H, W, C)`` on the host -> float ``(B, C, H, W)`` in [0, 1] on ``device``."""
    if images.dtype == torch.uint16:
        images = images.to(torch.int32)  # few ops accept uint16
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / float(norm["scale"])


@functools.lru_cache(maxsize=16)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple:
    # Made once per device: building them every step would copy from pageable memory, a host sync on GPUs.
    shape = (1, -1, 1, 1)
    return torch.tensor(mean, device=device).view(shape), torch.tensor(std, device=device).view(shape)


def standardize(x: torch.Tensor, norm: Norm, channels_last: bool = True) -> torch.Tensor:
    """Subtract the training set's per-channel mean and divide by its standard deviation."""
    mean, std = _constants(tuple(norm["mean"]), tuple(norm["std"]), x.device)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def normalize(images: torch.Tensor, norm: Norm, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """uint8/uint16 ``(B, H, W, C)`` on the host -> normalised float ``(B, C, H, W)`` on ``device``."""
    return standardize(to_unit(images, norm, device), norm, channels_last)
