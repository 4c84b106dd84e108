"""The ``unetseg`` command: thin wrappers that parse options into config dataclasses and call functions."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback

from unetseg.config import (
    PLAN_SKIP,
    DoctorConfig,
    EvaluateConfig,
    ExportConfig,
    PredictConfig,
    TrainConfig,
    build,
    load_yaml,
)
from unetseg.errors import UserError
from unetseg.options import flags_of, help_text, kind_of

# Options that `unetseg train` with no dataset uses for the bundled sample, unless given explicitly: a width-32
# U-Net on 256 x 256 crops for eight minutes (the cosine schedule follows the clock), which ends above 0.85
# foreground Dice on 2 CPU cores (README); one validation round per epoch, as epochs are short here.
SAMPLE_PRESET = {
    "width": 32,
    "epochs": 100000,
    "time_budget": "8m",
    "batch_size": 8,
    "patch_size": 256,
    "val_rounds": 1,
}


CONFIG_HELP = "YAML file of option: value lines (names as below, dashes or underscores); the command line wins"
PLAN_NOTE = (
    "Options marked 'planned' are chosen from the data and the device unless you give them; "
    "--no-plan uses the fixed defaults shown."
)


def add_options(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()
) -> dict[str, argparse._ArgumentGroup]:
    """One option per dataclass field, in argument groups from the field metadata; returns the groups by name.

    Defaults are suppressed so only what the user typed is seen; the help shows the default that will be used.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        name = meta.get("group", "options")
        if name not in groups:
            groups[name] = parser.add_argument_group(name)
        group = groups[name]
        flags = flags_of(f)
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text(f).replace("%", "%%")}
        kind, _ = kind_of(f)
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = flags[-1].lstrip("-").upper().replace("-", "_")
            if kind == "list":
                kwargs.update(nargs="+", action="extend")
            else:
                kwargs["type"] = {"int": int, "float": float}.get(kind, str)
                if meta.get("choices"):
                    kwargs.update(choices=meta["choices"], metavar="{" + ",".join(map(str, meta["choices"])) + "}")
                if meta.get("const") is not None:
                    kwargs.update(nargs="?", const=meta["const"])
        group.add_argument(*flags, **kwargs)
    return groups


# command -> (config dataclass, options of it the command does not use, one-line help)
SUBCOMMANDS: dict[str, tuple[type, tuple[str, ...], str]] = {
    "train": (TrainConfig, (), "train a model (default data: the bundled nuclei sample)"),
    "plan": (TrainConfig, PLAN_SKIP, "show the settings --plan would choose for a dataset on this device"),
    "evaluate": (EvaluateConfig, (), "per-class and per-image scores of a checkpoint on a dataset"),
    "predict": (PredictConfig, (), "masks for image files, folders or globs"),
    "export": (ExportConfig, (), "an ONNX or TorchScript model that takes raw pixels, with its class map"),
    "doctor": (DoctorConfig, (), "check a dataset before training: what is wrong and how to fix it"),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetseg",
        description="Train, evaluate, run and export U-Net segmentation models from folders of images and masks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command, (cls, skip, summary) in SUBCOMMANDS.items():
        planning = command in ("train", "plan")
        sub_parser = sub.add_parser(
            command, help=summary, description=f"{summary}. {PLAN_NOTE}" if planning else f"{summary}."
        )
        groups = add_options(sub_parser, cls, skip)
        if "config" not in {f.name for f in dataclasses.fields(cls)}:
            sub_parser.add_argument("--config", default=argparse.SUPPRESS, metavar="CONFIG", help=CONFIG_HELP)
        if command == "train":
            groups["run"].add_argument(
                "--resume", default=argparse.SUPPRESS, help="continue a run: its directory or a checkpoint"
            )
    return parser


def with_config_file(command: str, values: dict) -> dict:
    """The command line's options over those of ``--config FILE``, every key and value checked and named by file.

    ``train`` reads the file itself (below the settings of a resumed run), so only the check happens here.
    """
    cls, skip, _ = SUBCOMMANDS[command]
    path = values.get("config")
    if path is None:
        return values
    from_file = load_yaml(path, cls, skip, command)
    if command == "train":
        return values
    merged = from_file | values
    if "config" not in {f.name for f in dataclasses.fields(cls)}:
        merged.pop("config")
    return merged


def train_command(values: dict) -> int:
    from pathlib import Path

    from unetseg.core.checkpoint import load_checkpoint
    from unetseg.data.prepare import sample_dataset_dir
    from unetseg.train.loop import fit

    started = time.monotonic()  # a time budget counts from here (planning included)
    resume_from = values.pop("resume", None)
    resume = None
    if resume_from:
        path = Path(resume_from)
        path = path / "checkpoints" / "last.pt" if path.is_dir() else path
        resume = load_checkpoint(path)
        saved = dict(resume.get("config") or {})
        if not saved:
            raise UserError(f"--resume {resume_from}: checkpoint carries no run configuration; use -f/--load instead")
        saved["out"] = str(path.parent.parent) if path.parent.name == "checkpoints" else saved.get("out")
        values = saved | values
    if "config" in values and values["config"]:
        values = load_yaml(values["config"]) | values
    if not any(values.get(k) for k in ("data", "images", "masks")):
        values = SAMPLE_PRESET | values | {"data": str(sample_dataset_dir())}
    cfg = build(TrainConfig, values)
    launched = "WORLD_SIZE" in os.environ
    if cfg.nproc and not launched:
        from unetseg.data.folder import find_folders

        find_folders(cfg.data, cfg.images, cfg.masks)  # a missing folder: one clear message, before any process starts
        # Planned once here, so that every process trains with the same settings.
        chosen = apply_plan(cfg, values)[1] if cfg.plan and resume is None else {}
        return launch_torchrun(cfg.nproc, [*argv_without_nproc(), *option_args(chosen), "--no-plan"])
    if cfg.plan and resume is None:
        if not launched:
            cfg = apply_plan(cfg, values)[0]
        elif int(os.environ["WORLD_SIZE"]) > 1 and os.environ.get("RANK") == "0":
            print(
                "unetseg train: no plan under torchrun (the processes could plan differently); use `unetseg train "
                "--nproc N`, which plans once, or give the options `unetseg plan` prints",
                file=sys.stderr,
            )
    if cfg.folds:
        from unetseg.train.folds import cross_validate

        return cross_validate(cfg)
    return fit(cfg, resume, started)["exit_code"]


def planned(cfg: TrainConfig) -> list[tuple[str, object, str]]:
    """The plan for ``cfg``'s data on ``cfg``'s device."""
    from unetseg.config import parse_duration
    from unetseg.core.device import resolve_device
    from unetseg.data.prepare import prepare_for
    from unetseg.train.plan import make_plan

    data = prepare_for(cfg, fold=(cfg.fold or 0, cfg.folds) if cfg.folds else None)  # the split training will see
    budget = parse_duration(cfg.time_budget) if cfg.time_budget else None
    return make_plan(data, resolve_device(cfg.device), budget)


def show_plan(plan: list[tuple[str, object, str]], explicit: dict) -> None:
    for name, value, reason in plan:
        given = f"  (you gave {explicit[name]})" if name in explicit else ""
        print(f"  {name:<14} {str(value):<22} {reason}{given}")


def plan_options(plan: list[tuple[str, object, str]]) -> dict:
    """The plan's choices that are training options (the plan also reports e.g. normalisation)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {name: value for name, value, _ in plan if name in fields}


def option_args(options: dict) -> list[str]:
    """``{"batch_size": 8}`` -> ``["--batch-size", "8"]``; options left at None are left out."""
    return [
        arg
        for name, value in options.items()
        if value is not None
        for arg in (f"--{name.replace('_', '-')}", str(value))
    ]


def apply_plan(cfg: TrainConfig, explicit: dict) -> tuple[TrainConfig, dict]:
    """``cfg`` with the plan's choice for every option the user did not give, and those choices."""
    plan = planned(cfg)
    if cfg.log_format == "json":
        from unetseg.tracking.runlog import json_line

        fields = {n: {"value": v, "reason": r, "given": explicit.get(n)} for n, v, r in plan}
        print(json_line("plan", fields), flush=True)
    elif not cfg.quiet:
        print("plan (from the data and the device):")
        show_plan(plan, explicit)
    chosen = {n: v for n, v in plan_options(plan).items() if n not in explicit}
    return dataclasses.replace(cfg, **chosen), chosen


def plan_command(values: dict) -> int:
    from unetseg.data.prepare import sample_dataset_dir

    if not any(values.get(k) for k in ("data", "images", "masks")):
        values = values | {"data": str(sample_dataset_dir())}
    cfg = build(TrainConfig, values)
    plan = planned(cfg)
    print(f"plan for {cfg.data or cfg.images} (from the data and the device):")
    show_plan(plan, values)
    options = " ".join(option_args(plan_options(plan)))
    print(f"train with: unetseg train --data {cfg.data} {options}")
    return 0


def argv_without_nproc() -> list[str]:
    """This command line minus ``--nproc N`` (the launched processes must not launch again)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    return args


def launch_torchrun(nproc: int, args: list[str]) -> int:
    """``unetseg train --nproc N ...`` = ``torchrun --standalone --nproc_per_node N -m unetseg train ...``."""
    import subprocess

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "unetseg",
        *args,
    ]
    print("launching: " + " ".join(command[2:]), file=sys.stderr)
    return subprocess.call(command)


def evaluate_command(values: dict) -> int:
    from unetseg.evaluation.api import evaluate_checkpoint

    evaluate_checkpoint(build(EvaluateConfig, values))
    return 0


def predict_command(values: dict) -> int:
    cfg = build(PredictConfig, values)
    if cfg.model_path.lower().endswith(".onnx"):
        from unetseg.predict.onnx import predict_files  # ONNX Runtime only: this path never imports torch
    else:
        from unetseg.predict.pipeline import predict_files
    predict_files(cfg)
    return 0


def export_command(values: dict) -> int:
    from unetseg.export import export_model

    export_model(build(ExportConfig, values))
    return 0


def doctor_command(values: dict) -> int:
    from unetseg.data.doctor import run_doctor
    from unetseg.data.prepare import sample_dataset_dir

    if not any(values.get(k) for k in ("data", "images", "masks")):
        values = values | {"data": str(sample_dataset_dir())}  # as train and plan: the bundled sample
    return run_doctor(build(DoctorConfig, values))


COMMANDS = {
    "train": train_command,
    "evaluate": evaluate_command,
    "predict": predict_command,
    "export": export_command,
    "plan": plan_command,
    "doctor": doctor_command,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on bad input (one message, no traceback), 1 on an internal error."""
    command = ""  # known once the command line is parsed; errors before that are the parser's own
    try:
        args = vars(make_parser().parse_args(argv))
        command = args.pop("command")
        return COMMANDS[command](with_config_file(command, args))
    except UserError as err:
        print(f"{' '.join(['unetseg', command]).strip()}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unetseg {command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if command == "train" and "torch.distributed" in sys.modules:
            from unetseg.core.distributed import cleanup

            cleanup()


if __name__ == "__main__":
    sys.exit(main())
