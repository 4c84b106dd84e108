"""Optional experiment trackers behind ``--logger``: TensorBoard and Weights & Biases.

Both get the same content: training scalars at the logging interval, and at each validation round the scores,
histograms of weights and gradients (named as Pytorch-UNet named them) and image panels. Neither may slow or stop
training: values arrive already on the host, and W&B falls back to offline mode, or to nothing, by itself.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import netrc
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from unetseg.errors import UserError

# --logger name -> the package (and extra) it needs
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
HIST_BINS = 64
WANDB_INIT_TIMEOUT = 20.0  # s: a reachable service answers in a few; an unreachable one must not hold training
WANDB_FINISH_TIMEOUT = 60.0  # s: uploads left at the end stay on disk for `wandb sync`
TRAIN_TAGS = {"train_loss": "train/loss", "lr": "train/lr", "img_s": "train/img_s"}
ROW_SKIP = {"step", "epoch", "train_loss", "lr", "img_s"}  # logged as training scalars at the same step


def require(name: str) -> None:
    """Import the package behind ``--logger name`` now, so a missing one fails before any training."""
    try:
        importlib.import_module(EXTRAS[name])
    except ImportError:
        raise UserError(
            f"--logger {name}: the {EXTRAS[name]} package is not installed; install it with "
            f"pip install 'unetseg[{name}]'"
        ) from None


def gpu_memory() -> dict:
    """Allocated and peak GPU memory of this process in GiB (allocator counters: no device sync)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {
        "gpu_memory_gib": torch.cuda.memory_allocated() / 2**30,
        "gpu_peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


@dataclass
class Histogram:
    """A histogram computed on the device: ``counts`` in ``len(edges) - 1`` equal bins."""

    counts: np.ndarray
    edges: np.ndarray
    num: int
    sum: float
    sum_squares: float


def histograms(model: nn.Module, bins: int = HIST_BINS) -> dict[str, Histogram]:
    """``Weights/<name>`` and ``Gradients/<name>`` of every parameter (Pytorch-UNet's names).

    Computed on the device; tensors holding NaN or inf are left out, as Pytorch-UNet did. Gradients are those of
    the last optimizer step (the trainer clears them only when the next step starts). Called once per validation
    round, never in the step loop: the few host reads here cost nothing there.
    """
    tensors = {}
    for name, param in model.named_parameters():
        tensors[f"Weights/{name}"] = param.detach().flatten()
        if param.grad is not None:
            tensors[f"Gradients/{name}"] = param.grad.detach().flatten()
    if not tensors:
        return {}
    # A NaN or inf anywhere makes the sum non-finite: one cheap pass per tensor, one host read for all.
    sums = torch.stack([t.float().sum() for t in tensors.values()])
    squares = torch.stack([t.float().square().sum() for t in tensors.values()])
    finite = torch.isfinite(sums).tolist()
    kept = {tag: t.float() for (tag, t), ok in zip(tensors.items(), finite) if ok}
    if not kept:
        return {}
    ranges = torch.stack([torch.stack(torch.aminmax(t)) for t in kept.values()])
    counts = torch.stack([torch.histc(t, bins=bins) for t in kept.values()])  # min = max = 0: the data's range
    host = torch.cat([ranges, counts], dim=1).double().cpu().numpy()
    totals = {tag: (s, q) for tag, s, q in zip(tensors, sums.double().tolist(), squares.double().tolist())}
    result = {}
    for (tag, tensor), row in zip(kept.items(), host):
        low, high = row[0], row[1]
        if low == high:  # histc widens a constant tensor's range by 1 on each side
            low, high = low - 1, high + 1
        total, square = totals[tag]
        result[tag] = Histogram(row[2:], np.linspace(low, high, bins + 1), tensor.numel(), total, square)
    return result


def _finite_numbers(row: dict) -> dict[str, float]:
    """The validation scores of a metrics row (not the training values logged at the same step)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k not in ROW_SKIP
    }


class TensorBoardLog:
    """Scalars, histograms and image panels in ``<run>/tensorboard`` (torch.utils.tensorboard)."""

    name = "TensorBoard"

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run redoes the steps after its checkpoint: purge_step drops their old events.
        # flush_secs: the writer thread flushes in the background; 10 s keeps a live TensorBoard current.
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=10)

    def scalars(self, step: int, values: dict) -> None:
        """``train/loss``, ``train/lr``, ``train/img_s`` and ``system/gpu_*``."""
        for key, value in values.items():
            self.writer.add_scalar(TRAIN_TAGS.get(key, f"system/{key}"), value, step)

    def validation(self, step: int, row: dict, hists: dict[str, Histogram], views: list[dict]) -> None:
        """``val/<score>`` scalars, ``Weights/`` and ``Gradients/`` histograms, ``panels/<i>-<image>`` pictures."""
        for key, value in _finite_numbers(row).items():
            self.writer.add_scalar(f"val/{key}", value, step)
        for tag, hist in hists.items():
            self.writer.add_histogram_raw(
                tag,
                min=float(hist.edges[0]),
                max=float(hist.edges[-1]),
                num=hist.num,
                sum=hist.sum,
                sum_squares=hist.sum_squares,
                bucket_limits=hist.edges[1:].tolist(),
                bucket_counts=hist.counts.tolist(),
                global_step=step,
            )
        for index, view in enumerate(views):  # image | truth | prediction | overlay
            self.writer.add_image(f"panels/{index}-{view['name']}", view["strip"], step, dataformats="HWC")

    def close(self) -> None:
        """Flush the last events to disk."""
        self.writer.close()


def wandb_logged_in(env: dict | None = None) -> bool:
    """True when W&B credentials exist: ``WANDB_API_KEY``, an identity token, or a netrc entry for the host."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    path = Path(env.get("NETRC") or Path(env.get("HOME") or Path.home()) / ".netrc")
    try:
        return bool(path.is_file() and netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):  # an unreadable netrc is "not logged in", like W&B itself treats it
        return False


def wandb_mode(env: dict | None = None) -> str:
    """``WANDB_MODE`` when set; otherwise online for a logged-in user and offline for everyone else."""
    env = os.environ if env is None else env
    return env.get("WANDB_MODE") or ("online" if wandb_logged_in(env) else "offline")


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block (W&B reads some only from there)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WandbLog:
    """A Weights & Biases run in ``<run>/wandb`` with what Pytorch-UNet logged, under the same names."""

    name = "Weights & Biases"

    def __init__(self, run: object, class_names: list[str]) -> None:
        self.run = run
        self.labels = {i: n for i, n in enumerate(class_names)} | {255: "ignore"}

    @classmethod
    def open(cls, run_dir: Path, config: dict, class_names: list[str], warn: Callable[[str], None]) -> WandbLog | None:
        """Start (or, for a resumed unetseg run, continue) the W&B run; on any failure warn and return None."""
        import wandb

        folder = run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "unetseg-run-id"  # the same W&B run continues when training resumes
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        mode = wandb_mode()
        try:
            settings = wandb.Settings(
                init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT)),
                finish_timeout=WANDB_FINISH_TIMEOUT,
                silent=True,  # our console (and JSON lines) only
                console="off",  # no capture of stdout/stderr
            )
            with _environment(WANDB_SILENT="true"):
                run = wandb.init(
                    project=os.environ.get("WANDB_PROJECT", "unetseg"),
                    name=run_dir.name,
                    id=run_id,
                    resume="allow",
                    dir=str(run_dir),
                    config=config,
                    mode=mode,
                    settings=settings,
                )
        except Exception as err:  # CommError, timeouts, bad keys, ...: none may stop the training
            warn(
                f"Weights & Biases ({mode}) did not start: {type(err).__name__}: {_first_line(err)}; "
                "training continues without it (WANDB_MODE=offline logs without a network)"
            )
            return None
        id_file.write_text(run_id)
        run.define_metric("*", step_metric="step")
        return cls(run, class_names)

    def scalars(self, step: int, values: dict) -> None:
        """'train loss', 'learning rate', 'img/s' (and GPU memory) against 'step'."""
        names = {"train_loss": "train loss", "lr": "learning rate", "img_s": "img/s"}
        self.run.log({names.get(k, k): v for k, v in values.items()} | {"step": step})

    def validation(self, step: int, row: dict, hists: dict[str, Histogram], views: list[dict]) -> None:
        """'validation Dice' and every score, histograms, 'images' with true and predicted masks, 'masks'."""
        import wandb

        scores = _finite_numbers(row)
        entry: dict = {f"validation/{k}": v for k, v in scores.items()}
        entry |= {"step": step, "epoch": row.get("epoch"), "learning rate": row.get("lr")}
        if "dice_fg" in scores:
            entry["validation Dice"] = scores["dice_fg"]
        entry |= {tag: wandb.Histogram(np_histogram=(h.counts, h.edges)) for tag, h in hists.items()}
        if views:
            entry["images"] = [
                wandb.Image(
                    v["rgb"],
                    caption=v["name"],
                    masks={
                        "ground_truth": {"mask_data": v["truth"], "class_labels": self.labels},
                        "predictions": {"mask_data": v["pred"], "class_labels": self.labels},
                    },
                )
                for v in views
            ]
            entry["masks"] = {
                "true": [wandb.Image(v["truth_rgb"], caption=v["name"]) for v in views],
                "pred": [wandb.Image(v["pred_rgb"], caption=v["name"]) for v in views],
            }
        self.run.log(entry)

    def close(self) -> None:
        """End the run; the wait for uploads is bounded by ``finish_timeout`` (what is left stays on disk)."""
        self.run.finish()


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0][:200]
