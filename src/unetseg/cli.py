"""The ``unetseg`` command: thin wrappers that parse options into config dataclasses and call functions."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback

from unetseg.config import DoctorConfig, EvaluateConfig, ExportConfig, PredictConfig, TrainConfig, build
from unetseg.errors import UserError


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One option per dataclass field; defaults are suppressed so only what the user typed is seen."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        long = "--" + f.name.replace("_", "-")
        flags = [*meta.get("flags", ()), long]
        if f.name == "model_path":
            flags = ["-m", "--model"]
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta.get("help", "")}
        kind = str(f.type).split("|")[0].strip()
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("list"):
            kwargs.update(nargs="+", action="extend")
        else:
            kwargs["type"] = {"int": int, "float": float}.get(kind, str)
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if meta.get("const") is not None:
                kwargs.update(nargs="?", const=meta["const"])
        if f.default is not dataclasses.MISSING and f.default is not None and kind != "bool":
            kwargs["help"] += f" (default: {f.default})"
        parser.add_argument(*flags, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetseg",
        description="Train, evaluate, run and export U-Net segmentation models from folders of images and masks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (default data: the bundled nuclei sample)")
    add_options(train, TrainConfig)
    train.add_argument("--resume", default=argparse.SUPPRESS, help="continue a run: its directory or a checkpoint")
    plan = sub.add_parser("plan", help="show the settings --plan would choose for a dataset on this device")
    add_options(plan, TrainConfig)
    evaluate = sub.add_parser("evaluate", help="per-class and per-image scores of a checkpoint on a dataset")
    add_options(evaluate, EvaluateConfig)
    predict = sub.add_parser("predict", help="masks for image files, folders or globs")
    add_options(predict, PredictConfig)
    predict.add_argument("-n", dest="save", action="store_false", default=argparse.SUPPRESS, help="= --no-save")
    export = sub.add_parser("export", help="an ONNX or TorchScript model that takes raw pixels, with its class map")
    add_options(export, ExportConfig)
    doctor = sub.add_parser("doctor", help="check a dataset before training: what is wrong and how to fix it")
    add_options(doctor, DoctorConfig)
    return parser


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
    args = vars(make_parser().parse_args(argv))
    command = args.pop("command")
    try:
        return COMMANDS[command](args)
    except UserError as err:
        print(f"unetseg {command}: error: {err}", file=sys.stderr)
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
