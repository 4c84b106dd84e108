"""The ``unetseg`` command: thin wrappers that parse options into config dataclasses and call functions."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback

from unetseg.config import (
    PLAN_SKIP,
    ConvertConfig,
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
    "convert": (
        ConvertConfig,
        ("val_data", "scale", "channels", "classes"),
        "write an annotation source (COCO, VOC, Cityscapes...) as a plain folder dataset, or a dataset as COCO",
    ),
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
        if command == "predict":  # Pytorch-UNet's -n/--no-save
            groups["input and output"].add_argument(
                "-n", dest="save", action="store_false", default=argparse.SUPPRESS, help="the same as --no-save"
            )
    return parser


def with_config_file(command: str, values: dict) -> dict:
    """The command line's options over those of ``--config FILE``, every key and value checked and named by file.

    ``train`` and ``plan`` leave the file to the training API, which reads and checks it the same way, beneath the
    settings of a resumed run.
    """
    cls, skip, _ = SUBCOMMANDS[command]
    path = values.get("config")
    if path is None or command in ("train", "plan"):
        return values
    from_file = load_yaml(path, cls, skip, command)
    merged = from_file | values
    if "config" not in {f.name for f in dataclasses.fields(cls)}:
        merged.pop("config")
    return merged


def train_command(values: dict) -> int:
    from unetseg.training.api import train_from_options

    started = time.monotonic()  # a time budget counts from here (planning included)
    return train_from_options(values, started).exit_code


def plan_command(values: dict) -> int:
    from unetseg.training.api import plan_report

    print("\n".join(plan_report(values)))
    return 0


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


def convert_command(values: dict) -> int:
    from unetseg.data.formats.convert import convert

    convert(build(ConvertConfig, values))
    return 0


COMMANDS = {
    "train": train_command,
    "evaluate": evaluate_command,
    "predict": predict_command,
    "export": export_command,
    "plan": plan_command,
    "doctor": doctor_command,
    "convert": convert_command,
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
