"""The Python API mirrors the command line: unetseg.train, unetseg.evaluate, the plan's command and the relaunch."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml

import unetseg
from conftest import make_dataset
from unetseg.cli import main, make_parser
from unetseg.errors import UserError
from unetseg.evaluation.api import Report
from unetseg.training import api

FAST = {"epochs": 1, "width": 8, "workers": 1, "quiet": True, "batch_size": 2}


def test_train_equals_the_command_for_the_same_options_and_seed(tmp_path):
    data = make_dataset(tmp_path / "d", count=6, size=(32, 32))
    result = unetseg.train(data=data, out=tmp_path / "api", **FAST)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "cli"), "-e", "1", "--width", "8"]
    assert main([*args, "--workers", "1", "--quiet", "-b", "2"]) == 0
    assert isinstance(result, api.TrainResult) and result.exit_code == 0 and result.steps > 0
    assert result.run_dir == tmp_path / "api" and result.best_checkpoint.exists()
    cli = torch.load(tmp_path / "cli" / "checkpoints" / "best.pt", weights_only=True)
    ours = torch.load(result.best_checkpoint, weights_only=True)
    assert result.best_score == pytest.approx(cli["score"]["dice_fg"], abs=0)
    for name, tensor in cli["state_dict"].items():
        assert torch.equal(tensor, ours["state_dict"][name]), name


def test_evaluate_returns_the_report_the_command_writes(tmp_path):
    data = make_dataset(tmp_path / "d", count=4, size=(32, 32))
    best = unetseg.train(data=str(data), out=str(tmp_path / "run"), plan=False, **FAST).best_checkpoint
    report = unetseg.evaluate(best, data)
    assert main(["evaluate", "-m", str(best), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 0
    written = json.loads((tmp_path / "e.json").read_text())
    assert isinstance(report, Report) and report.images == report["images"] == written["images"] == 4
    assert report.dice_fg == pytest.approx(written["dice_fg"], abs=1e-12)
    assert report.headline["name"] == written["headline"]["name"] == "dice_fg"
    assert [c["name"] for c in report.classes] == [c["name"] for c in written["classes"]]
    assert report.confusion == written["confusion"] and report.worst == written["worst"]
    assert set(report.to_dict()) == set(written)  # every field of the --json file, and nothing else
    with pytest.raises(KeyError):
        report["no_such_field"]


def test_bad_options_raise_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown option"):
        unetseg.train(data=tmp_path, no_such_option=1)
    with pytest.raises(UserError, match="epochs"):
        unetseg.train(data=tmp_path, epochs=0)


def test_resume_continues_the_run(tmp_path):
    data = make_dataset(tmp_path / "d", count=4, size=(32, 32))
    first = unetseg.train(data=data, out=tmp_path / "run", plan=False, **FAST)
    more = unetseg.train(resume=first.run_dir, epochs=2, quiet=True)
    assert more.run_dir == first.run_dir and more.steps == 2 * first.steps
    # Precedence: the resumed run's settings, then the --config file, then what the user gives.
    (tmp_path / "c.yaml").write_text("batch_size: 3\nworkers: 2\n")
    values, ckpt = api.resolve_options({"resume": str(first.run_dir), "config": str(tmp_path / "c.yaml"), "workers": 1})
    assert ckpt is not None and (values["width"], values["batch_size"], values["workers"]) == (8, 3, 1)


def test_plan_table_shows_the_value_that_is_used(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", count=4, size=(40, 40))
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--width", "4", "-e", "1", "--workers", "1"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("width"))
    assert row.split()[1] == "4" and "given" in row
    assert yaml.safe_load((out / "config.yaml").read_text())["width"] == 4


@pytest.mark.parametrize(
    "given",
    [
        ["--time-budget", "90s"],
        ["-s", "0.5", "-c", "2", "--width", "8"],
        ["--images", "IMGS", "--masks", "MASKS", "--no-cache"],
        ["--batch-size", "3", "--epochs", "7"],
    ],
)
def test_the_plan_prints_a_command_that_trains_with_exactly_the_plan(tmp_path, given):
    data = make_dataset(tmp_path / "d", count=4, size=(40, 40))
    given = [str(data / "imgs") if a == "IMGS" else str(data / "masks") if a == "MASKS" else a for a in given]
    source = [] if "--images" in given else ["--data", str(data)]
    values = vars(make_parser().parse_args(["plan", *source, *given]))
    values.pop("command")
    lines = api.plan_report(dict(values))
    command = shlex.split(lines[-1].removeprefix("train with: "))
    assert command[:2] == ["unetseg", "train"] and "None" not in command
    pasted = vars(make_parser().parse_args(command[1:]))
    pasted.pop("command")
    from unetseg.config import TrainConfig, build

    resolved, _ = api.resolve_options(dict(values))
    planned = api.apply_plan(build(TrainConfig, resolved), resolved)
    import dataclasses

    assert build(TrainConfig, pasted) == dataclasses.replace(planned, plan=False, quiet=planned.quiet)
    for flag in given:
        if flag.startswith("-") and flag != "--no-cache":
            assert any(c == flag or c == "--" + flag.lstrip("-") for c in command) or flag in ("-s", "-c")


def test_nproc_relaunches_with_the_resolved_configuration_from_a_file(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", count=4, size=(32, 32))
    seen = {}

    def call(command):
        seen["command"] = command
        path = command[command.index("--config") + 1]
        seen["config"] = yaml.safe_load(Path(path).read_text())
        return 0

    monkeypatch.setattr(api.subprocess, "call", call)
    monkeypatch.setattr("sys.argv", ["unetseg", "something", "else"])  # main's own argument list is what counts
    argv = ["train", "--data", str(data), "--nproc", "2", "--width", "8", "--quiet", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    assert seen["command"][-4:-2] == ["unetseg", "train"] and "--nproc" not in seen["command"]
    cfg = seen["config"]
    assert cfg["width"] == 8 and cfg["nproc"] is None and cfg["plan"] is False and cfg["out"] == str(tmp_path / "r")
    assert cfg["patch_size"] is None and cfg["batch_size"] == 8  # the plan's choices, made once here
