"""Multi-process training on CPU with the gloo backend: torchrun, DDP, sharded evaluation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from conftest import make_dataset
from unetseg.cli import main
from unetseg.core.distributed import DistInfo
from unetseg.data.samples import Sample
from unetseg.evaluation.scoring import evaluate
from unetseg.models import create_model
from unetseg.models.unet import UNet

COMMON = [
    *("--width", "4", "--workers", "1", "--quiet", "--no-save-epochs", "--precision", "fp32", "--loss", "ce"),
    *("--augment", "none", "--val-rounds", "1", "-e", "2", "--seed", "3", "--optimizer", "sgd", "-l", "0.05"),
    "--no-plan",  # both runs take exactly these settings (torchrun-launched processes do not plan)
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model", ["unet", "resunet"])
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, model):
    """2 processes x batch 2 = one process x batch 2 x 2 accumulated batches: same samples per step, and BatchNorm
    sees the same 2-image batches (SyncBatchNorm needs CUDA), so the weights must agree up to float rounding.
    SGD keeps rounding differences at their size (Adam's normalised steps would magnify them near zero gradients)."""
    # resunet's 5 strided stages leave 1 x 1 maps of 32 x 32 images, where BatchNorm over 2 values magnifies rounding
    side = 64 if model == "resunet" else 32
    data = make_dataset(tmp_path / "d", count=18, size=(side, side))
    single = tmp_path / "single"
    code = main(
        ["train", "--data", str(data), "-b", "2", "--accumulate", "2", "--out", str(single), *COMMON, "--model", model]
    )
    assert code == 0
    double = tmp_path / "double"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "unetseg",
        "train",
        "--data",
        str(data),
        "-b",
        "2",
        "--out",
        str(double),
        *COMMON,
        *("--model", model),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[:3000]
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)["train_state"]
    b = torch.load(double / "checkpoints" / "last.pt", weights_only=True)["train_state"]
    assert a["state"]["step"] == b["state"]["step"] == 8  # 16 training images / global batch 4, 2 epochs
    # BatchNorm running stats differ by design: DDP keeps rank 0's
    params = dict(create_model(model, n_channels=1, n_classes=2, width=4).named_parameters())
    for key in params:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5, rtol=1e-4), key
    assert len(list((double / "checkpoints").iterdir())) == 2  # only rank 0 wrote: last.pt and best.pt


def _evaluate_rank(rank: int, world: int, port: int, samples: list, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = UNet(1, 3, width=4).eval()
    norm = {"scale": 255.0, "mean": [0.5], "std": [0.25]}
    result = evaluate(model, samples, norm, 3, torch.device("cpu"), batch_size=2, dist_info=DistInfo(rank, world))
    if rank == 0:
        queue.put((result["confusion"], sorted(result["images"])))
    dist.destroy_process_group()


def test_sharded_evaluation_equals_single_process_exactly():
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            f"s{i}",
            rng.integers(0, 255, (24, 20 + 4 * (i % 3), 1), dtype=np.uint8),
            rng.integers(0, 3, (24, 20 + 4 * (i % 3)), dtype=np.uint8),
        )
        for i in range(7)
    ]
    torch.manual_seed(0)
    model = UNet(1, 3, width=4).eval()
    norm = {"scale": 255.0, "mean": [0.5], "std": [0.25]}
    single = evaluate(model, samples, norm, 3, torch.device("cpu"), batch_size=2)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_evaluate_rank, args=(2, free_port(), samples, queue), nprocs=2, start_method="spawn")
    confusion, names = queue.get(timeout=60)
    assert confusion == single["confusion"]
    assert names == sorted(single["images"])  # every image once: 7 images over 2 ranks, none padded in


def test_nproc_starts_torchrun_for_the_user(tmp_path):
    data = make_dataset(tmp_path / "d", count=10, size=(32, 32))
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unetseg",
            "train",
            "--nproc",
            "2",
            "--data",
            str(data),
            "-b",
            "2",
            "--out",
            str(run),
            *COMMON,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[:3000]
    assert "--nproc_per_node=2" in result.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["train_state"]["state"]["step"] == 4


def test_processes_stop_together_at_the_time_budget_and_the_launcher_plans_once(tmp_path):
    """Each process's clock differs a little; they must stop after the same step, or one waits forever for the
    other's gradients. The plan is made once by the launcher and handed to both processes in a configuration file."""
    data = make_dataset(tmp_path / "d", count=12, size=(32, 32))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "unetseg", "train", "--nproc", "2", "--data", str(data), "--out", str(run)]
    command += ["-b", "2", "--width", "4", "--workers", "1", "-e", "100000", "--time-budget", "6s"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plan (from the data and the device)" in result.stdout and "--config" in result.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["plan"] is False and saved["nproc"] is None and saved["time_budget"] == "6s"
    assert "reached --time-budget 6s" in result.stdout
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["train_state"]["state"]["step"] > 0


def test_a_two_process_checkpoint_resumes_in_one_process_and_back(tmp_path):
    data = make_dataset(tmp_path / "d", count=10, size=(32, 32))
    run = tmp_path / "run"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "unetseg", "train"]
    args = ["--data", str(data), "-b", "2", "--width", "4", "--workers", "1", "--quiet", "--no-save-epochs"]
    first = subprocess.run(
        [*launch, "--nproc", "2", *args, "--out", str(run), "-e", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert first.returncode == 0, first.stderr[:3000]
    assert main(["train", "--resume", str(run), "-e", "2", "--quiet"]) == 0  # 2 processes -> 1
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["train_state"]["state"]
    assert (state["epoch"], state["step"]) == (2, 2 + 4)  # 2 steps at global batch 4, then 4 at batch 2
    again = subprocess.run(
        [*launch, "--nproc", "2", "--resume", str(run), "-e", "3"], capture_output=True, text=True, timeout=300, env=env
    )
    assert again.returncode == 0, again.stderr[:3000]  # 1 process -> 2
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["train_state"]["state"]["epoch"] == 3
