"""Pretrained encoder weights: torchvision's ImageNet ResNets through torch.hub's cache, or a local file.

``--encoder-weights imagenet`` downloads the official torchvision file once (torch.hub keeps it in
``<torch.hub.get_dir()>/checkpoints`` and checks its hash); offline, with no cached copy, it fails at once with a
message naming the URL, the cache path and the ``FILE`` alternative. ``--encoder-weights FILE`` reads a ``.pth``
in torchvision's or timm's key layout (the two ResNets name their parameters alike) and checks that every encoder
tensor is there with the right shape before anything is copied.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch

from unetseg.errors import UserError
from unetseg.models.resnet import WEIGHT_URLS, adapt_first_conv
from unetseg.models.unet_resnet import UNetResNet

DOWNLOAD_TIMEOUT_S = 20  # a socket that neither connects nor sends for this long is offline, not slow
# Wrappers that training scripts put around a state_dict (timm's train.py, Lightning, smp): the first found wins.
WRAPPERS = ("state_dict_ema", "state_dict", "model")
# Prefixes of an encoder inside a larger model: DDP, timm/Lightning modules, smp's Unet, torchvision's backbones.
PREFIXES = ("module.", "model.", "encoder.", "backbone.", "body.")
HEAD = ("fc.",)  # the ImageNet classifier, which a segmentation encoder does not have


def cache_path(url: str) -> Path:
    """Where torch.hub keeps (and looks for) the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def imagenet_state(depth: int) -> dict:
    """torchvision's ImageNet ResNet-``depth`` weights, from torch.hub's cache or downloaded into it."""
    url = WEIGHT_URLS[depth]
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UserError(
            f"--encoder-weights imagenet: cannot get {url} ({type(err).__name__}: {str(err)[:160]}); "
            f"without network access, download that file elsewhere and put it at {cache_path(url)} "
            "(torch.hub's cache, checked by its hash), or pass --encoder-weights FILE with a local .pth, "
            "or --encoder-weights none to train the encoder from scratch"
        ) from None


def file_state(path: str | Path) -> dict:
    """A local weights file, read with ``weights_only=True``, unwrapped to its state_dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--encoder-weights {path}: no such file; pass imagenet, none, or the path of a .pth weights file"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise UserError(
            f"--encoder-weights {path}: not a readable PyTorch weights file ({type(err).__name__}: "
            f"{str(err)[:160]}); save the encoder's state_dict with torch.save"
        ) from None
    for key in WRAPPERS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"--encoder-weights {path}: holds no state_dict of tensors; save model.state_dict()")
    return data


def encoder_keys(state: dict) -> dict:
    """``state`` with wrapper prefixes removed and the classifier left out: torchvision's ResNet names."""
    own = {}
    for key, value in state.items():
        name = key
        for prefix in PREFIXES:
            name = name.removeprefix(prefix)
        if not name.startswith(HEAD):
            own[name] = value
    return own


def load_encoder_weights(model: UNetResNet, source: str) -> str:
    """Copy pretrained weights into ``model.encoder``; returns what was loaded, for the console."""
    depth = model.encoder.depth
    if source == "imagenet":
        state, what = imagenet_state(depth), f"ImageNet (torchvision resnet{depth}, {WEIGHT_URLS[depth]})"
    else:
        state, what = file_state(source), f"{source}"
    state = encoder_keys(state)
    encoder = model.encoder.state_dict()
    needed = [k for k in encoder if not k.endswith("num_batches_tracked")]  # older torchvision files lack them
    missing = [k for k in needed if k not in state]
    extra = [k for k in state if k not in encoder]
    rgb = state.get("conv1.weight")
    if rgb is not None and rgb.dim() == 4 and rgb.shape[1] == 3:
        state["conv1.weight"] = adapt_first_conv(rgb, model.n_channels)  # smp's rule for 1, 2 and 4+ channels
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(encoder[k].shape)}"
        for k in needed
        if k in state and state[k].shape != encoder[k].shape
    ]
    if missing or extra or shapes:
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)}: {', '.join(missing[:4])}" if missing else "",
                f"extra {len(extra)}: {', '.join(extra[:4])}" if extra else "",
                f"shape {', '.join(shapes[:3])}" if shapes else "",
            )
            if part
        )
        raise UserError(
            f"--encoder-weights {source}: the weights do not fit the resnet{depth} encoder ({detail}); "
            f"pass a torchvision or timm resnet{depth} state_dict (the classifier fc.* may be left in)"
        )
    model.encoder.load_state_dict(state, strict=False)  # strict on every tensor above; only counters may lack
    return what
