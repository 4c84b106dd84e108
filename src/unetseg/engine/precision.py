"""Device and numeric precision, chosen once up front."""

from __future__ import annotations

import contextlib
import functools

import torch

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


@functools.lru_cache(maxsize=8)
def _channel_stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``(1, C, 1, 1)`` on the device, made once: each upload from the host is a CPU-GPU sync point."""
    with torch.inference_mode(False):  # cached tensors must also serve code that runs outside inference mode
        return tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (mean, std))


def normalize(images: torch.Tensor, norm: dict, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """uint8/uint16 ``(B, H, W, C)`` on the host -> normalised float ``(B, C, H, W)`` on ``device``."""
    if images.dtype == torch.uint16:
        images = images.to(torch.int32)  # few ops accept uint16
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    mean, std = _channel_stats(tuple(norm["mean"]), tuple(norm["std"]), device)
    x = (x / float(norm["scale"]) - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
