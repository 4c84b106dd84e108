"""One gate for every option: the command line, ``--config FILE`` and the Python API are checked alike."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from unetseg.cli import main
from unetseg.config import (
    PLAN_SKIP,
    EvaluateConfig,
    ExportConfig,
    PredictConfig,
    TrainConfig,
    build,
    load_yaml,
)
from unetseg.errors import UserError

# Every row also names a data folder or checkpoint that does not exist, so that a value the gate wrongly let
# through fails fast on the missing file (with another message) instead of starting work.
T = ["--data", "{tmp}/missing"]
E = ["-m", "{tmp}/missing.pt", "--data", "{tmp}/missing"]
P = ["-m", "{tmp}/missing.pt", "-i", "{tmp}/missing.png"]
X = ["-m", "{tmp}/missing.pt"]

# (command, arguments, YAML text for --config or None, fragment expected on stderr)
PROBES = [
    # train: out of range
    ("train", [*T, "--patch-size", "100000"], None, "--patch-size 100000: choose a size from 16 to 4096"),
    ("train", [*T, "--width", "100000"], None, "--width 100000: choose a value from 1 to 512"),
    ("train", [*T, "--warmup-steps", "-5"], None, "--warmup-steps -5: choose a value from 0"),
    ("train", [*T, "-l", "100"], None, "-l/--learning-rate 100: choose a value greater than 0 and at most 10"),
    ("train", [*T, "-l", "0"], None, "-l/--learning-rate 0: choose a value greater than 0"),
    ("train", [*T, "--time-budget", "0"], None, "--time-budget 0: the budget must be longer than zero"),
    ("train", [*T, "--time-budget", "0m"], None, "--time-budget 0m: the budget must be longer than zero"),
    ("train", [*T, "--weight-decay", "-1"], None, "--weight-decay -1: choose a value from 0 to 1"),
    ("train", [*T, "--momentum", "-1"], None, "--momentum -1: choose a value at least 0 and less than 1"),
    ("train", [*T, "--momentum", "1"], None, "--momentum 1: choose a value at least 0 and less than 1"),
    ("train", [*T, "--val-batch-size", "0"], None, "--val-batch-size 0: choose a value from 1"),
    ("train", [*T, "--seed", "-1"], None, "--seed -1: choose a value from 0 to 4294967295"),
    ("train", [*T, "--seed", "4294967296"], None, "--seed 4294967296: choose a value from 0 to 4294967295"),
    ("train", [*T, "--nproc", "-1"], None, "--nproc -1: choose a value from 1"),
    ("train", [*T, "--grad-clip", "-1"], None, "--grad-clip -1: choose a value from 0"),
    ("train", [*T, "--workers", "0"], None, "--workers 0: choose a value from 1 to 256"),
    ("train", [*T, "--ema", "1"], None, "--ema 1: choose a decay greater than 0 and less than 1"),
    ("train", [*T, "--foreground-crops", "1.5"], None, "--foreground-crops 1.5: choose a share from 0 to 1"),
    ("train", [*T, "-e", "0"], None, "-e/--epochs 0: choose a value from 1"),
    ("train", [*T, "-b", "0"], None, "-b/--batch-size 0: choose a value from 1"),
    ("train", [*T, "-s", "0"], None, "-s/--scale 0: choose a value greater than 0 and at most 16"),
    ("train", [*T, "-v", "100"], None, "-v/--validation 100: choose a percent at least 0 and less than 100"),
    ("train", [*T, "-c", "0"], None, "-c/--classes 0: choose a value from 1 to 255"),
    ("train", [*T, "--accumulate", "0"], None, "--accumulate 0: choose a value from 1"),
    ("train", [*T, "--val-rounds", "0"], None, "--val-rounds 0"),
    ("train", [*T, "--patience", "0"], None, "--patience 0"),
    ("train", [*T, "--max-bad-steps", "0"], None, "--max-bad-steps 0"),
    ("train", [*T, "--folds", "1"], None, "--folds 1: choose a value from 2"),
    # train: not finite
    ("train", [*T, "-l", "inf"], None, "-l/--learning-rate inf: choose a finite value"),
    ("train", [*T, "-l", "nan"], None, "-l/--learning-rate nan: choose a finite value"),
    ("train", [*T, "--ema", "nan"], None, "--ema nan: choose a finite decay"),
    ("train", [*T, "--class-weights", "nan"], None, "--class-weights nan: write none, auto, or one finite positive"),
    ("train", [*T, "--class-weights", "1,inf"], None, "--class-weights 1,inf"),
    # train: wrong syntax, type or choice
    ("train", [*T, "--class-weights", "1,-2"], None, "--class-weights 1,-2"),
    ("train", [*T, "--class-weights", "heavy"], None, "--class-weights heavy"),
    ("train", [*T, "--time-budget", "soon"], None, "--time-budget soon: not a duration"),
    ("train", [*T, "--logger", "csv;tb"], None, "--logger 'csv;tb': write names separated by commas"),
    ("train", [*T, "--width", "abc"], None, "--width: invalid int value"),
    ("train", [*T, "--precision", "foo"], None, "--precision: invalid choice"),
    # train: options that go together
    ("train", ["--data", "a", "--images", "b", "--masks", "c"], None, "--data and --images/--masks"),
    ("train", ["--images", "{tmp}/b"], None, "--images and --masks go together"),
    ("train", ["--masks", "{tmp}/b"], None, "--images and --masks go together"),
    ("train", [*T, "--folds", "3", "--fold", "3"], None, "--fold 3: with --folds 3 choose a fold from 0 to 2"),
    ("train", [*T, "--fold", "1"], None, "--fold needs --folds K"),
    # train: through a YAML file
    ("train", T, "precision: foo", "--precision must be one of auto, fp32, bf16, fp16"),
    ("train", T, "channels: 2", "--channels must be one of 1, 3, 4"),
    ("train", T, "width: true", "--width takes a whole number, not True"),
    ("train", T, "epochs: 1.5", "-e/--epochs takes a whole number, not 1.5"),
    ("train", T, "epochs: [1, 2]", "-e/--epochs takes a whole number"),
    ("train", T, "learning_rate: .inf", "-l/--learning-rate inf: choose a finite value"),
    ("train", T, "learning-rate: fast", "-l/--learning-rate takes a number, not 'fast'"),
    ("train", T, "amp: 1", "--amp takes true or false, not 1"),
    ("train", T, "data: true", "--data takes text, not True"),
    ("train", T, "patch_size: 100000", "--patch-size 100000: choose a size from 16 to 4096"),
    ("train", T, "time_budget: 0", "--time-budget 0: the budget must be longer than zero"),
    ("train", T, "class_weights: .nan", "--class-weights nan"),
    ("train", T, "seed: -1", "--seed -1"),
    ("train", T, "nosuch: 1", "unknown option 'nosuch' for unetseg train"),
    ("train", T, "optimiser: sgd", "did you mean --optimizer"),
    ("train", T, "model:\n  name: unet", "model holds a nested mapping"),
    ("train", T, "- epochs\n- 5", "expected a mapping of option: value, found list"),
    ("train", T, "epochs: [", "not valid YAML"),
    ("train", T, "1: 2", "option names are text"),
    # plan: only what planning uses
    ("plan", [*T, "--logger", "csv"], None, "unrecognized arguments: --logger"),
    ("plan", [*T, "--save-every", "5"], None, "unrecognized arguments: --save-every"),
    ("plan", [*T, "--ema", "0.99"], None, "unrecognized arguments: --ema"),
    ("plan", [*T, "--out", "x"], None, "unrecognized arguments: --out"),
    ("plan", [*T, "--overwrite"], None, "unrecognized arguments: --overwrite"),
    ("plan", [*T, "--nproc", "2"], None, "unrecognized arguments: --nproc"),
    ("plan", [*T, "--resume", "x"], None, "unrecognized arguments: --resume"),
    ("plan", [*T, "--width", "0"], None, "--width 0: choose a value from 1 to 512"),
    ("plan", [*T, "--time-budget", "0"], None, "--time-budget 0: the budget must be longer than zero"),
    ("plan", T, "logger: tensorboard", "--logger means nothing to unetseg plan"),
    ("plan", T, "out: runs/x", "--out means nothing to unetseg plan"),
    ("plan", T, "batch_size: 0", "-b/--batch-size 0"),
    # evaluate: only what scoring reads
    ("evaluate", [*E, "-v", "10"], None, "unrecognized arguments: -v"),
    ("evaluate", [*E, "--val-data", "x"], None, "unrecognized arguments: --val-data"),
    ("evaluate", [*E, "-c", "2"], None, "unrecognized arguments: -c"),
    ("evaluate", [*E, "--channels", "3"], None, "unrecognized arguments: --channels"),
    ("evaluate", [*E, "--worst", "-1"], None, "--worst -1: choose a value from 0"),
    ("evaluate", [*E, "-b", "0"], None, "-b/--batch-size 0"),
    ("evaluate", [*E, "-s", "inf"], None, "-s/--scale inf: choose a finite value"),
    ("evaluate", ["--data", "{tmp}/missing"], None, "-m/--model is required"),
    ("evaluate", E, "val_data: x", "unknown option 'val_data' for unetseg evaluate"),
    ("evaluate", E, "precision: fp8", "--precision must be one of"),
    ("evaluate", E, "worst: 2.5", "--worst takes a whole number"),
    # predict
    ("predict", [*P, "-t", "1"], None, "-t/--threshold 1: choose a value greater than 0 and less than 1"),
    ("predict", [*P, "-t", "nan"], None, "-t/--threshold nan: choose a finite value"),
    ("predict", [*P, "--tile", "8"], None, "--tile 8: choose a tile size from 16"),
    ("predict", [*P, "--tile", "100000"], None, "--tile 100000: choose a tile size from 16 to 16384"),
    ("predict", [*P, "--overlap", "1"], None, "--overlap 1: choose a share at least 0 and less than 1"),
    ("predict", [*P, "--overlap", "-0.1"], None, "--overlap -0.1"),
    ("predict", [*P, "-b", "0"], None, "-b/--batch-size 0"),
    ("predict", [*P, "--workers", "0"], None, "--workers 0"),
    ("predict", [*P, "-s", "17"], None, "-s/--scale 17: choose a value greater than 0 and at most 16"),
    ("predict", [*P, "--suffix", "png"], None, "--suffix 'png': write a file suffix such as .png"),
    ("predict", [*P, "--tta", "rot"], None, "--tta: invalid choice"),
    ("predict", ["-m", "{tmp}/missing.pt"], None, "-i/--input is required"),
    ("predict", P, "threshold: 2", "-t/--threshold 2"),
    ("predict", P, "input: 5", "-i/--input takes a list of text values, not 5"),
    ("predict", P, "tile: 8.5", "--tile takes a whole number, not 8.5"),
    ("predict", P, "format: jpeg", "--format must be one of value, index, color"),
    # export
    ("export", [*X, "--opset", "9"], None, "--opset 9: choose an opset from 13 to 23"),
    ("export", [*X, "--opset", "99"], None, "--opset 99: choose an opset from 13 to 23"),
    ("export", [*X, "--format", "torchscript", "--opset", "18"], None, "--opset applies to --format onnx"),
    ("export", [*X, "--input-dtype", "int8"], None, "--input-dtype: invalid choice"),
    ("export", ["-o", "{tmp}/m.onnx"], None, "-m/--model is required"),
    ("export", X, "opset: 9", "--opset 9: choose an opset from 13 to 23"),
    ("export", X, "with_argmax: yes please", "--with-argmax takes true or false"),
    ("export", X, "format: tflite", "--format must be one of onnx, torchscript"),
    # doctor
    ("doctor", [*T, "--workers", "0"], None, "--workers 0: choose a value from 1 to 256"),
    ("doctor", [*T, "-s", "0"], None, "-s/--scale 0"),
    ("doctor", [*T, "-c", "300"], None, "-c/--classes 300: choose a value from 1 to 255"),
    ("doctor", [*T, "--channels", "2"], None, "--channels: invalid choice"),
    ("doctor", [*T, "-v", "10"], None, "unrecognized arguments: -v"),
    ("doctor", T, "validation: 10", "unknown option 'validation' for unetseg doctor"),
    ("doctor", T, "workers: -3", "--workers -3"),
    ("doctor", T, "cache: maybe", "--cache takes true or false, not 'maybe'"),
]


def _args(args: list[str], tmp_path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in args]


@pytest.mark.parametrize("command, args, text, needle", PROBES)
def test_bad_option_exits_2_with_one_message(command, args, text, needle, tmp_path, capsys):
    argv = [command, *_args(args, tmp_path)]
    if text is not None:
        (tmp_path / "opts.yaml").write_text(text)
        argv += ["--config", str(tmp_path / "opts.yaml")]
    try:
        code = main(argv)
    except SystemExit as done:  # argparse's own errors
        code = done.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert "Traceback" not in err
    if text is not None and "invalid choice" not in needle:
        assert "opts.yaml" in err  # a bad value from a file names the file


def test_the_table_covers_every_command():
    assert len(PROBES) >= 40
    assert {p[0] for p in PROBES} == {"train", "plan", "evaluate", "predict", "export", "doctor"}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--data", "{tmp}/missing", "-l", "nan"], "-l/--learning-rate nan"),
        (["evaluate", "-m", "x.pt", "-v", "10"], "unrecognized arguments: -v"),
        (["predict", "-m", "x.pt", "-i", "a.png", "--overlap", "2"], "--overlap 2"),
    ],
)
def test_bad_option_in_a_subprocess(args, needle, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-m", "unetseg", *_args(args, tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2 and needle in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2  # usage line + error


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.mkdir(), "this is a folder"),
        (lambda p: None, "file does not exist"),
        (lambda p: p.write_bytes(b"epochs: 5\nname: \xff\xfe\n"), "not UTF-8"),
    ],
)
def test_config_file_problems_name_the_file(make, needle, tmp_path, capsys):
    path = tmp_path / "opts.yaml"
    make(path)
    assert main(["train", "--data", str(tmp_path / "missing"), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and "Traceback" not in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_file(tmp_path, capsys):
    path = tmp_path / "opts.yaml"
    path.write_text("epochs: 5\n")
    path.chmod(0)
    assert main(["doctor", "--data", str(tmp_path), "--config", str(path)]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_valid_yaml_values_of_each_type_are_accepted(tmp_path):
    path = tmp_path / "opts.yaml"
    path.write_text(
        "epochs: 3\nlearning_rate: 1e-3\nweight-decay: 0\namp: true\ncompile: null\nwidth: 16\nout: 123\n"
        "ema: 0.99\nclass_weights: 1,5\ntime_budget: 90\nchannels: 3\nscale: 1\n--seed: 7\nmomentum: '0.5'\n"
    )
    values = load_yaml(path, TrainConfig, command="train")
    cfg = build(TrainConfig, values)
    assert (cfg.epochs, cfg.width, cfg.channels, cfg.seed) == (3, 16, 3, 7)
    assert cfg.learning_rate == 1e-3 and cfg.weight_decay == 0.0 and isinstance(cfg.weight_decay, float)
    assert cfg.scale == 1.0 and isinstance(cfg.scale, float) and cfg.momentum == 0.5
    assert cfg.amp is True and cfg.compile is None and cfg.out == "123" and cfg.time_budget == "90"
    assert cfg.class_weights == "1,5" and cfg.ema == 0.99
    (tmp_path / "p.yaml").write_text("input: a.png\nbatch_size: 2\ntta: full\n")
    predict = build(PredictConfig, {"model_path": "m.pt"} | load_yaml(tmp_path / "p.yaml", PredictConfig))
    assert predict.input == ["a.png"] and predict.tta == "full"
    assert build(PredictConfig, {"model_path": "m.pt", "input": ["a", "b"]}).input == ["a", "b"]


def test_empty_config_file_is_no_options(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_yaml(tmp_path / "empty.yaml", TrainConfig) == {}


def test_command_line_wins_over_the_config_file(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setitem(
        __import__("unetseg.cli", fromlist=["COMMANDS"]).COMMANDS, "evaluate", lambda v: seen.update(v) or 0
    )
    (tmp_path / "opts.yaml").write_text("worst: 3\nbatch_size: 4\n")
    assert main(["evaluate", "-m", "m.pt", "-b", "2", "--config", str(tmp_path / "opts.yaml")]) == 0
    assert seen == {"model_path": "m.pt", "batch_size": 2, "worst": 3}


def test_direct_construction_goes_through_the_gate():
    with pytest.raises(UserError, match="--width takes a whole number, not True"):
        TrainConfig(width=True)
    with pytest.raises(UserError, match="--quiet takes true or false"):
        TrainConfig(quiet="no")
    with pytest.raises(UserError, match="--patch-size 100000"):
        TrainConfig(patch_size=100000)
    with pytest.raises(UserError, match="--device takes text, not True"):
        EvaluateConfig(model_path="m.pt", device=True)
    assert TrainConfig(learning_rate=1).learning_rate == 1.0
    assert PredictConfig(model_path="m.pt", input="a.png").input == ["a.png"]
    with pytest.raises(UserError, match="-m/--model is required"):
        ExportConfig()


def test_build_refuses_what_the_command_does_not_use():
    with pytest.raises(UserError, match="--logger means nothing to unetseg plan"):
        build(TrainConfig, {"logger": "tensorboard"}, PLAN_SKIP, "plan")
    with pytest.raises(UserError, match="unknown option 'widht'.*did you mean --width"):
        build(TrainConfig, {"widht": 8})
    assert build(TrainConfig, {"logger": "csv", "width": 8}, PLAN_SKIP, "plan").width == 8  # defaults pass


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_train_help_shows_groups_planned_and_boolean_defaults(capsys):
    text = _help("train", capsys)
    for group in ("data:", "run:", "model:", "optimisation:", "schedule and stopping:", "validation:", "logging:"):
        assert group in text
    assert "hardware:" in text and "distributed:" in text
    assert "--width WIDTH channels of the first U-Net level (64 as in Pytorch- UNet) (default: planned;" in text
    assert "(default: planned; 8 with --no-plan)" in text  # batch size
    assert "(default: 5; planned under --time-budget)" in text  # epochs
    assert "--amp, --no-amp mixed precision" in text and "grad scaler (default: off)" in text
    assert (
        "--channels-last, --no-channels-last channels-last memory format (faster convolutions on GPU and CPU) "
        "(default: on)" in text
    )
    assert "--resume" in text and "(default: None)" not in text


def test_required_options_are_marked(capsys):
    for command in ("evaluate", "predict", "export"):
        text = _help(command, capsys)
        model_help = text.split("-m MODEL, --model MODEL", 1)[1].split(" -", 1)[0]
        assert model_help.endswith("(required)") and "(default" not in model_help
    assert "image files, folders or globs (required)" in _help("predict", capsys)


def test_plan_and_evaluate_help_leave_out_what_they_do_not_use(capsys):
    plan = _help("plan", capsys)
    assert "--logger" not in plan and "--out" not in plan and "--nproc" not in plan and "--time-budget" in plan
    evaluate = _help("evaluate", capsys)
    assert "--validation" not in evaluate and "--val-data" not in evaluate and "--classes-file" not in evaluate


def test_a_user_error_while_building_the_parser_is_exit_2(monkeypatch, capsys):
    import unetseg.cli as cli

    def broken() -> None:
        raise UserError("--thing: broken")

    monkeypatch.setattr(cli, "make_parser", broken)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "unetseg: error: --thing: broken"
