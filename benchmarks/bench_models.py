"""Per registered model: parameters, training and inference throughput, printed as one Markdown table.

    python benchmarks/bench_models.py                       # CPU, 256 x 256, every trainable model
    python benchmarks/bench_models.py --models unet resunet --steps 5 --device cuda
    python benchmarks/bench_models.py --smoke               # seconds, for tests
    python benchmarks/bench_models.py --accuracy nuclei-dsb2018 crackforest --minutes 5   # about 1 h on 2 cores

Training: forward, loss (cross-entropy), backward and an AdamW step on random batches of ``--size`` squared,
under bf16 autocast where the device runs it natively (``--precision auto``), else fp32. Inference: eval mode,
``torch.inference_mode``, the same precision. Times are wall-clock means over ``--steps`` after one warm-up
step; on a shared machine they vary, so compare models within one run.

Accuracy (``--accuracy DATASET ...``): per model and suite dataset, ``unetseg train --model NAME --time-budget``
with nothing else (the plan chooses the rest, as for a user who names the model), from scratch, then ``unetseg
evaluate`` of best.pt on the held-out split, with bench_generalize.py's splits and scores. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unetseg.models import TRAINABLE, create_model

# The configurations a user gets: unet and resunet at the CPU plan's width 32, the ResNet U-Nets with smp's decoder.
DEFAULTS = {
    "unet": {"width": 32},
    "resunet": {"width": 32},
    "unet-resnet18": {"width": 64},
    "unet-resnet34": {"width": 64},
    "unet-resnet50": {"width": 64},
}
SMOKE = {"unet": {"width": 4}, "resunet": {"width": 4, "depth": 3, "blocks": [1, 1, 1]}, "unet-resnet18": {"width": 8}}


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix units exist: CUDA with bf16 support, or a CPU with AMX or AVX-512 BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.backends.cpu.get_cpu_capability()
    return cpu in ("AVX512_BF16", "AMX") or bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def timed(step, steps: int, device: torch.device) -> float:
    """Seconds per call of ``step``, after one warm-up call."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def measure(name: str, spec: dict, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    model = create_model(name, trainable=True, n_channels=3, n_classes=2, **spec).to(device)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch, args.size, args.size), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(x)

    model.train()
    train_s = timed(train_step, args.steps, device)
    model.eval()
    infer_s = timed(infer_step, args.steps, device)
    return {
        "model": name,
        "config": ", ".join(f"{k} {v}" for k, v in spec.items()),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_ips": args.batch / train_s,
        "infer_ips": args.batch / infer_s,
    }


def accuracy(names: list[str], datasets: list[str], minutes: float, smoke: bool) -> None:
    """Train each model from scratch on each dataset under one budget; print the held-out scores as a table."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_generalize as bg

    suites = {s.name: s for s in bg.SUITE}
    unknown = [d for d in datasets if d not in suites and not smoke]
    if unknown:
        raise SystemExit(f"--accuracy: unknown dataset(s) {', '.join(unknown)}; known: {', '.join(suites)}")
    print(f"\nuptime before: {os.getloadavg()[0]:.2f} load, {time.strftime('%H:%M:%S')}")
    print("| model | dataset | budget | score | held-out score | steps | plan | load |")
    print("|---|---|---|---|---:|---:|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        jobs = []
        if smoke:
            jobs.append((bg.Suite("smoke", "every5", "miou", minutes, (64, 48)), bg.smoke_dataset(Path(tmp) / "s")))
        for name in datasets if not smoke else []:
            suite = dataclasses.replace(suites[name], minutes=minutes)
            if not (bg.SHARED / name).exists():
                print(f"{name}: skipped, {bg.SHARED / name} is absent", file=sys.stderr)
                continue
            jobs.append((suite, bg.SHARED / name))
        for suite, root in jobs:
            for model in names:
                work = Path(tmp) / f"{suite.name}-{model}"
                extra = ["--model", model] + (["--width", "4"] if smoke else [])
                row = bg.run_one(suite, root, work, 1.0, extra, naive=False)
                with open(work / "run" / "metrics.csv") as f:
                    steps = max((int(float(r["step"])) for r in csv.DictReader(f)), default=0)
                plan = ", ".join(f"{k} {row['plan'][k]}" for k in ("width", "patch_size", "scale", "learning_rate"))
                print(
                    f"| {model} | {suite.name} | {suite.minutes:g} min | {suite.score} | {row['unetseg']:.4f} "
                    f"| {steps} | {plan} | {row['load']} |",
                    flush=True,
                )
    print(f"uptime after: {os.getloadavg()[0]:.2f} load, {time.strftime('%H:%M:%S')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=TRAINABLE, default=list(TRAINABLE))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--smoke", action="store_true", help="tiny models at 64 x 64, one step: seconds")
    parser.add_argument(
        "--accuracy", nargs="+", metavar="DATASET", help="also train each model on these suite datasets, from scratch"
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="the time budget of each --accuracy run")
    parser.add_argument("--no-speed", action="store_true", help="skip the throughput table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = SMOKE if args.smoke else DEFAULTS
    if args.smoke:
        args.size, args.batch, args.steps, args.models = 64, 2, 1, [m for m in args.models if m in SMOKE]
    bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16(device))
    dtype = torch.bfloat16 if bf16 else torch.float32
    if args.accuracy and args.no_speed:
        accuracy(args.models, args.accuracy, args.minutes, args.smoke)
        return
    print(
        f"device {device} ({torch.get_num_threads()} threads), precision {str(dtype).removeprefix('torch.')}, "
        f"batch {args.batch} of {args.size}x{args.size}, mean of {args.steps} steps after one warm-up"
    )
    print("| model | config | parameters (M) | train img/s | inference img/s |")
    print("|---|---|---:|---:|---:|")
    for name in args.models:
        row = measure(name, configs[name], args, device, dtype)
        print(
            f"| {row['model']} | {row['config']} | {row['params_m']:.2f} | {row['train_ips']:.2f} | "
            f"{row['infer_ips']:.2f} |",
            flush=True,
        )
    if args.accuracy:
        accuracy(args.models, args.accuracy, args.minutes, args.smoke)


if __name__ == "__main__":
    main()
