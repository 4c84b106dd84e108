"""``unetseg.train(...)``: the function behind ``unetseg train``.

The command line only parses. What turns options into a run lives here: the resume merge, the ``--config`` file, the
bundled-sample preset, the plan, cross-validation and the torchrun relaunch of ``--nproc N``.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unetseg.config import PLAN_SKIP, TrainConfig, build, load_yaml, parse_duration, to_dict
from unetseg.errors import UserError
from unetseg.training.rundir import default_run_dir

# Options that `unetseg train` with no dataset uses for the bundled sample, unless given explicitly: an eight-minute
# budget (the cosine schedule follows the clock); everything else is the plan's, as for any dataset. It ends above
# 0.85 foreground Dice on 2 CPU cores (README).
SAMPLE_PRESET = {
    "time_budget": "8m",
}

Plan = list[tuple[str, object, str]]


@dataclass(frozen=True)
class TrainResult:
    """What a training run left behind."""

    run_dir: Path
    best_score: float | None  # best validation score (see score_name); None when nothing was validated
    best_checkpoint: Path | None  # checkpoints/best.pt, or ensemble.pt after cross-validation
    exit_code: int  # as the command's: 0 done, 2 bad input, 143/130 stopped by a signal
    reason: str  # why the run ended
    steps: int = 0  # optimizer steps taken (0 for cross-validation, whose folds are separate runs)
    score_name: str | None = None  # the score that selects best.pt: dice_fg, or miou where class 0 is a real class


def train(data: str | Path | None = None, **options: Any) -> TrainResult:
    """Train a model, as ``unetseg train`` does with the same options.

    Options are the command's long names with underscores (``epochs=1, width=8, out="run"``); ``resume=DIR`` continues
    a run, ``config=FILE`` reads options from YAML (explicit options win). With no data the bundled sample is used.
    Bad options raise :class:`unetseg.errors.UserError`.
    """
    values = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None}
    if data is not None:
        values["data"] = str(data)
    return train_from_options(values)


def train_from_options(values: dict, started: float | None = None) -> TrainResult:
    """Train from a dict of the options the user gave (command line or Python); the time budget counts from
    ``started`` (``time.monotonic()``), default now, so that planning counts too."""
    started = time.monotonic() if started is None else started
    resume_from = values.get("resume")
    values, resume = resolve_options(values)
    cfg = build(TrainConfig, values)
    launched = "WORLD_SIZE" in os.environ
    plan = cfg.plan and resume is None
    if cfg.nproc and not launched:
        from unetseg.data.folder import find_folders
        from unetseg.data.formats import read_source

        if read_source(cfg.data, cfg.images, cfg.masks) is None:  # annotation formats are checked when read
            find_folders(cfg.data, cfg.images, cfg.masks)  # a missing folder: one message, before any process starts
        if cfg.val_data:
            find_folders(cfg.val_data, None, None, "--val-data")
        if plan:  # planned once here, so that every process trains with the same settings
            cfg = apply_plan(cfg, values)
        return relaunch(cfg, resume_from)
    chosen: list = []  # the plan's choices and reasons, for report.html
    if plan:
        if not launched:
            cfg = apply_plan(cfg, values, chosen)
        elif int(os.environ["WORLD_SIZE"]) > 1 and os.environ.get("RANK") == "0":
            print(
                "unetseg train: no plan under torchrun (the processes could plan differently); use `unetseg train "
                "--nproc N`, which plans once, or give the options `unetseg plan` prints",
                file=sys.stderr,
            )
    if cfg.folds:
        return cross_validation(cfg)
    from unetseg.training.loop import fit

    if chosen and cfg.pilot and cfg.time_budget:
        from unetseg.training.pilot import run_pilots

        if cfg.out is None:  # the pilots live in the run directory: fix it before they start
            cfg = dataclasses.replace(cfg, out=str(default_run_dir()))
        cfg, code = run_pilots(cfg, chosen, started)
        if code:
            return TrainResult(Path(cfg.out), None, None, code, "interrupted during the pilot runs")
    result = fit(cfg, resume, started, plan=chosen or None)
    best = result["best_score"]
    return TrainResult(
        run_dir=Path(result["run_dir"]),
        best_score=best if best is not None and best > float("-inf") else None,
        best_checkpoint=Path(result["best_checkpoint"]),
        exit_code=result["exit_code"],
        reason=result["reason"],
        steps=result["steps"],
        score_name=result["score_name"],
    )


def resolve_options(values: dict, skip: tuple[str, ...] = (), command: str = "train") -> tuple[dict, dict | None]:
    """The options with the resumed run's configuration, the ``--config`` file and the sample preset beneath them
    (what the user gave wins), and the checkpoint to resume from."""
    from unetseg.training.state import load_resume

    values = dict(values)
    resume, saved = None, {}
    resume_from = values.pop("resume", None)
    if resume_from:
        path = Path(resume_from)
        path = path / "checkpoints" / "last.pt" if path.is_dir() else path
        resume = load_resume(path)
        saved = dict(resume.get("config") or {})
        if not saved:
            raise UserError(f"--resume {resume_from}: checkpoint carries no run configuration; use -f/--load instead")
        saved["out"] = str(path.parent.parent) if path.parent.name == "checkpoints" else saved.get("out")
    if values.get("config"):
        # The file may record the configuration it was made from (a relaunch does): that name is the one kept.
        values = (
            {"config": values["config"]}
            | load_yaml(values["config"], TrainConfig, skip, command)
            | values_without(values, "config")
        )
    values = saved | values  # the resumed run's settings, beneath the file's and the user's
    if not any(values.get(k) for k in ("data", "images", "masks")):
        from unetseg.data.prepare import sample_dataset_dir

        values = SAMPLE_PRESET | values | {"data": str(sample_dataset_dir())}
    return values, resume


def values_without(values: dict, *names: str) -> dict:
    return {k: v for k, v in values.items() if k not in names}


def cross_validation(cfg: TrainConfig) -> TrainResult:
    """``--folds K``: the folds' runs, their pooled out-of-fold score and the ensemble."""
    import json

    from unetseg.training.folds import cross_validate

    if cfg.out is None:  # one root for every fold, known before the first fold starts
        cfg = dataclasses.replace(cfg, out=str(default_run_dir()))
    code = cross_validate(cfg)
    root = Path(cfg.out)
    cv, ensemble = root / "cv.json", root / "ensemble.pt"
    headline = json.loads(cv.read_text())["headline"] if cv.exists() else {}
    return TrainResult(
        run_dir=root,
        best_score=headline.get("value"),
        score_name=headline.get("name"),
        best_checkpoint=ensemble if ensemble.exists() else None,
        exit_code=code,
        reason="cross-validation finished" if code == 0 else "cross-validation stopped",
    )


def planned(cfg: TrainConfig, given: dict | None = None) -> Plan:
    """The plan for ``cfg``'s data on ``cfg``'s device, around the options the user ``given``."""
    from unetseg.core.device import resolve_device
    from unetseg.data.prepare import prepare_for
    from unetseg.training.plan import make_plan

    data = prepare_for(cfg, fold=(cfg.fold or 0, cfg.folds) if cfg.folds else None)  # the split training will see
    budget = parse_duration(cfg.time_budget) if cfg.time_budget else None
    fixed = {k: getattr(cfg, k) for k in (given or {}) if hasattr(cfg, k)}  # as checked and converted
    return make_plan(data, resolve_device(cfg.device), budget, fixed)


def plan_options(plan: Plan) -> dict:
    """The plan's choices that are training options (the plan also reports e.g. normalisation)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {name: value for name, value, _ in plan if name in fields}


def plan_rows(plan: Plan, given: dict) -> list[tuple]:
    """``(option, value, why)`` per choice, with the value that will be used: the user's where they gave one."""
    return [(n, given[n], f"given (the plan would choose {v}: {r})") if n in given else (n, v, r) for n, v, r in plan]


def plan_lines(plan: Plan, given: dict) -> list[str]:
    """One line per choice, showing the value that will be used: the user's where they gave one."""
    return [f"  {name:<14} {str(value):<22} {reason}" for name, value, reason in plan_rows(plan, given)]


def apply_plan(cfg: TrainConfig, given: dict, record: list | None = None) -> TrainConfig:
    """``cfg`` with the plan's choice for every option the user did not give; the plan is printed (and its rows
    ``(option, value used, why)`` appended to ``record``)."""
    plan = planned(cfg, given)
    if record is not None:
        record.extend(plan_rows(plan, given))
    if cfg.log_format == "json":
        from unetseg.tracking.runlog import json_line

        fields = {n: {"value": v, "reason": r, "given": given.get(n)} for n, v, r in plan}
        print(json_line("plan", fields), flush=True)
    elif not cfg.quiet:
        print("plan (from the data and the device):")
        print("\n".join(plan_lines(plan, given)))
    chosen = {n: v for n, v in plan_options(plan).items() if n not in given}
    return dataclasses.replace(cfg, **chosen)


def option_args(options: dict) -> list[str]:
    """``{"batch_size": 8, "amp": True}`` -> ``["--batch-size", "8", "--amp"]``; options left at None are left out."""
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list | tuple):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def plan_report(values: dict) -> list[str]:
    """``unetseg plan``: the plan for these options, and the command that trains with exactly it."""
    values, _ = resolve_options(values, PLAN_SKIP, "plan")
    cfg = build(TrainConfig, values, PLAN_SKIP, "plan")
    given = values_without(values, "config")
    plan = planned(cfg, given)
    command = option_args(given | {n: v for n, v in plan_options(plan).items() if n not in given} | {"plan": False})
    return [
        f"plan for {cfg.data or cfg.images} (from the data and the device):",
        *plan_lines(plan, given),
        "train with: " + shlex.join(["unetseg", "train", *command]),
    ]


def relaunch(cfg: TrainConfig, resume: str | None) -> TrainResult:
    """``--nproc N``: ``torchrun --standalone --nproc_per_node N -m unetseg train --config RESOLVED``.

    The processes read the resolved configuration from a file (planned here once, with a run directory fixed here so
    that every process writes into the same one), not from a rebuilt command line.
    """
    out = cfg.out or str(default_run_dir())
    resolved = to_dict(dataclasses.replace(cfg, nproc=None, plan=False, out=out))
    with tempfile.TemporaryDirectory(prefix="unetseg-launch-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(resolved, sort_keys=False))
        args = ["train", "--config", str(path), *(["--resume", resume] if resume else [])]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}"]
        command += ["-m", "unetseg", *args]
        print("launching: " + " ".join(command[2:]), file=sys.stderr)
        code = subprocess.call(command)
    return launched_result(Path(out), code)


def launched_result(run_dir: Path, code: int) -> TrainResult:
    """The result of a run that other processes trained, read from its last checkpoint."""
    from unetseg.core.checkpoint import load_checkpoint

    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(last) if last.exists() else {}
    state = ckpt.get("train_state", {}).get("state", {})
    score = state.get("best")
    return TrainResult(
        run_dir=run_dir,
        best_score=score if score is not None and score > float("-inf") else None,
        best_checkpoint=best if best.exists() else None,
        exit_code=code,
        reason="finished" if code == 0 else f"the training processes exited with status {code}",
        steps=state.get("step", 0),
        score_name=(ckpt.get("score") or {}).get("name"),
    )
