"""Loggers: console modes, metrics files, plots, TensorBoard event files and the offline W&B run folder."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_dataset
from unetseg.cli import main
from unetseg.config import TrainConfig, build
from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError
from unetseg.tracking import backends as trackers
from unetseg.tracking import charts, plots
from unetseg.tracking.runlog import RunLog

TINY = ["--width", "4", "-b", "4", "--workers", "1", "--val-rounds", "2"]
ALL = ["--logger", "csv,tensorboard,wandb"]


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """W&B offline, with its config, cache and data folders in a temporary home (never the user's)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("WANDB_MODE", "offline")
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(home / name.lower()))
        for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "NETRC"):
            patch.delenv(name, raising=False)
        yield home


@pytest.fixture(scope="module")
def logged(tmp_path_factory, wandb_env):
    """One epoch with every logger, then a resume to a second epoch (3 classes, 32 x 32 images)."""
    root = tmp_path_factory.mktemp("logged")
    data = make_dataset(root / "data", count=12, size=(32, 32), values=(0, 128, 255))
    run = root / "run"
    args = ["train", "--data", str(data), "--out", str(run), "-v", "25", *TINY, *ALL, "--quiet"]
    assert main([*args, "-e", "1"]) == 0
    first_id = (run / "wandb" / "unetseg-run-id").read_text()
    assert main(["train", "--resume", str(run), "-e", "2", "--quiet"]) == 0
    return run, first_id


def read_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_metrics_csv_and_train_log(logged):
    run, _ = logged
    rows = read_rows(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # 9 images, batch 4: 2 steps and 2 rounds per epoch
    for name in ("background", "class1", "class2"):
        assert f"dice_{name}" in rows[0] and f"iou_{name}" in rows[0]
    log = (run / "train.log").read_text()
    assert "classes     background (value 0" in log and "logging     csv, tensorboard, wandb (offline)" in log
    assert log.count("val dice_fg") == 4 and "done (finished all epochs)" in log


def test_tensorboard_events_hold_scalars_histograms_and_panels(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = logged
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/img_s", "val/dice_fg", "val/dice_class1", "val/iou_class2"):
        assert tag in tags["scalars"], tag
    # The resume purged nothing it redid: one value per round, at the rounds' steps.
    assert [e.step for e in events.Scalars("val/dice_fg")] == [1, 2, 3, 4]
    dice = [float(r["dice_fg"]) for r in read_rows(run)]
    assert [e.value for e in events.Scalars("val/dice_fg")] == pytest.approx(dice, abs=1e-5)
    model = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["state_dict"]
    weights = [n for n in model if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for name in weights:
        assert f"Weights/{name}" in tags["histograms"] and f"Gradients/{name}" in tags["histograms"], name
    gradient = events.Histograms("Gradients/outc.conv.weight")
    assert len(gradient) == 4 and all(h.histogram_value.sum_squares > 0 for h in gradient)  # real, kept gradients
    panels = [t for t in tags["images"] if t.startswith("panels/")]
    assert len(panels) == 3  # the 3 validation images
    image = events.Images(panels[0])[-1]
    assert (image.width, image.height) == (4 * 32 + 3 * 2, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU memory is logged on CUDA only")
def test_tensorboard_logs_gpu_memory_on_cuda(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = logged
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert all(e.value > 0 for e in events.Scalars("system/gpu_memory_gib"))
    assert "system/gpu_peak_memory_gib" in events.Tags()["scalars"]


def test_offline_wandb_run_folder(logged):
    run, first_id = logged
    assert (run / "wandb" / "unetseg-run-id").read_text() == first_id  # the resume continued the same W&B run
    folders = sorted((run / "wandb").glob(f"offline-run-*-{first_id}*"))
    assert len(folders) == 2
    record = (folders[0] / f"run-{first_id}.wandb").read_bytes()
    for key in (b"train loss", b"learning rate", b"validation Dice", b"Weights/", b"Gradients/", b"masks"):
        assert key in record, key
    assert b"learning_rate" in record and b"class_map" in record  # the resolved config
    media = list((folders[0] / "files" / "media" / "images").rglob("*.png"))
    assert media and all(Image.open(p).format == "PNG" for p in media)


def tall_runs(column: np.ndarray, background: np.ndarray, least: int) -> int:
    """How many runs of at least ``least`` consecutive non-background pixels a pixel column holds."""
    inked = (column != background).any(-1).astype(int)
    edges = np.diff(np.r_[0, inked, 0])
    starts, ends = np.where(edges == 1)[0], np.where(edges == -1)[0]
    return int(((ends - starts) >= least).sum())


def test_plots_show_the_curves_and_one_gallery_row_per_validation_image(logged):
    run, _ = logged
    curves = np.asarray(Image.open(run / "plots" / "curves.png").convert("RGB"))
    assert len(np.unique(curves.reshape(-1, 3), axis=0)) > 10  # lines, text and grid, not a blank picture
    gallery = np.asarray(Image.open(run / "plots" / "gallery.png").convert("RGB"))
    # 12 images, -v 25: 3 validation images, each a row of image / truth / prediction / overlay
    assert tall_runs(gallery[:, gallery.shape[1] // 8], gallery[0, 0], least=100) == 3
    truth = gallery[:, gallery.shape[1] * 3 // 8]
    colours = {tuple(c) for c in truth}
    class_map = ClassMap(values=[0, 128, 255])
    assert {tuple(class_map.colors[k]) for k in (1, 2)} <= colours  # the truth tiles show both foreground classes


def test_quiet_prints_nothing(tmp_path, capfd, wandb_env):
    data = make_dataset(tmp_path / "d", count=10, size=(32, 32))  # 9 train images: 2 batches, 2 rounds
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "-e", "1", *TINY, *ALL, "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert "val dice_fg" in (tmp_path / "r" / "train.log").read_text()  # the log file still has everything


def test_json_lines_for_scripts(tmp_path, capfd):
    data = make_dataset(tmp_path / "d", count=10, size=(32, 32))  # 9 train images: 2 batches, 2 rounds
    args = ["train", "--data", str(data), "--out", str(tmp_path / "r"), "-e", "1", *TINY, "--log-format", "json"]
    assert main(args) == 0
    out, err = capfd.readouterr()
    assert err == ""  # no progress bars either
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["plan", "start"] and kinds[-1] == "done" and kinds.count("validation") == 2
    assert "train" in kinds and events[0]["batch_size"]["value"] == 8 and events[0]["width"]["given"] == 4
    events = events[1:]
    assert events[0]["classes"][1]["name"] == "class1" and events[0]["parameters"] > 0
    assert events[-1]["best_checkpoint"].endswith("best.pt") and events[-1]["exit_code"] == 0
    rounds = [e for e in events if e["event"] == "validation"]
    assert [e["step"] for e in rounds] == [int(r["step"]) for r in read_rows(tmp_path / "r")]


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_missing_extra_names_the_install_command(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if the package were not installed
    data = make_dataset(tmp_path / "d", count=4, size=(32, 32))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--logger", f"csv,{name}"]) == 2
    assert f"pip install 'unetseg[{name}]'" in capsys.readouterr().err


def test_log_format_from_a_config_file_is_checked():
    with pytest.raises(UserError, match="--log-format must be one of text, json"):
        build(TrainConfig, {"log_format": "xml"})


def test_unknown_logger_lists_the_known_ones(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", count=4, size=(32, 32))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--logger", "neptune"]) == 2
    assert "known: csv, tensorboard, wandb, mlflow" in capsys.readouterr().err


def test_unreachable_wandb_service_does_not_stop_training(tmp_path, capfd, monkeypatch, wandb_env):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    data = make_dataset(tmp_path / "d", count=10, size=(32, 32))  # 9 train images: 2 batches, 2 rounds
    started = time.monotonic()
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "-e", "1", *TINY, "--logger", "wandb"])
    assert code == 0 and time.monotonic() - started < 90
    assert "Weights & Biases (online) did not start" in capfd.readouterr().err
    assert len(read_rows(tmp_path / "r")) == 2


def test_wandb_mode_follows_the_login(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert trackers.wandb_mode({"HOME": str(home)}) == "offline"
    assert trackers.wandb_mode({"HOME": str(home), "WANDB_API_KEY": "k" * 40}) == "online"
    assert trackers.wandb_mode({"HOME": str(home), "WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}) == "disabled"
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert trackers.wandb_mode({"HOME": str(home)}) == "online"
    assert trackers.wandb_mode({"HOME": str(home), "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"
    (home / ".netrc").write_text("machine {broken")
    assert trackers.wandb_mode({"HOME": str(home)}) == "offline"


def test_other_ranks_write_and_print_nothing(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = RunLog(None, quiet=True, loggers="csv,tensorboard,wandb")
    model = torch.nn.Conv2d(1, 2, 3)
    log.start(["summary"], {}, ClassMap(values=[0, 255]), {})
    log.info("hello")
    log.warn("careful")
    log.scalars(1, {"train_loss": 0.5, "lr": 1e-3, "img_s": 10.0})
    log.validation(1, {"step": 1, "dice_fg": 0.5}, model, [], True, message="round")
    log.close()
    assert list(tmp_path.iterdir()) == [] and capfd.readouterr() == ("", "")


def test_histograms_of_weights_and_last_gradients():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 1, 1))
    torch.nn.init.zeros_(model[0].bias)
    model(torch.randn(2, 1, 8, 8)).mean().backward()
    model[1].bias.grad.fill_(math.nan)
    hists = trackers.histograms(model, bins=8)
    assert "Gradients/1.bias" not in hists  # non-finite: left out, as Pytorch-UNet did
    assert len(hists) == 2 * 4 - 1
    weight = hists["Weights/0.weight"]
    assert weight.counts.sum() == weight.num == 18 and len(weight.edges) == 9
    assert weight.edges[0] == pytest.approx(model[0].weight.min().item())
    assert weight.sum_squares == pytest.approx(model[0].weight.square().sum().item(), rel=1e-5)
    constant = hists["Weights/0.bias"]  # all zeros: histc centres it in a range widened by 1 each side
    assert (constant.edges[0], constant.edges[-1]) == (-1, 1) and constant.counts.sum() == 2


def test_gallery_of_any_image_kind_with_class_colours(tmp_path):
    class_map = ClassMap(values=[0, 1, 2], names=["bg", "cell", "edge"])
    truth = np.zeros((20, 40), np.uint8)
    truth[5:10, 5:15], truth[0, :] = 1, 255
    pred = np.full((20, 40), 2, np.uint8)
    panels = [
        {"name": "rgba16", "image": np.full((20, 40, 4), 4000, np.uint16), "truth": truth, "pred": pred},
        {"name": "grey", "image": np.zeros((20, 40, 1), np.uint8), "truth": truth, "pred": pred, "score": 0.25},
    ]
    path = plots.save_gallery(tmp_path / "sub" / "g.png", panels, class_map, tile=80)
    picture = Image.open(path)
    assert picture.format == "PNG"
    assert picture.size == plots.gallery_size(panels, tile=80) == (4 * 80 + 5 * 8, 56 + 2 * (40 + 18 + 8) + 8)
    pixels = np.asarray(picture.convert("RGB"))
    top = 56  # first row; tiles are scaled x2 (40 px wide -> 80)
    truth_tile = pixels[top : top + 40, 8 + 80 + 8 : 8 + 2 * 80 + 8]
    assert tuple(truth_tile[15, 20]) == tuple(class_map.colors[1]) and tuple(truth_tile[0, 0]) == plots.IGNORE_COLOR
    assert tuple(pixels[top + 20, 8 + 2 * 88 + 40]) == tuple(class_map.colors[2])  # prediction tile


def test_curves_from_metrics_rows_with_gaps_and_none(tmp_path):
    class_map = ClassMap(values=[0, 255])
    rows = [
        {"step": str(s), "train_loss": str(1 / s), "lr": "1e-3", "dice_background": "0.9", "dice_class1": d}
        for s, d in ((1, "0.1"), (2, ""), (3, "0.5"))
    ]
    for data in (rows, []):
        path = charts.save_curves(tmp_path / "c.png", data, class_map)
        picture = Image.open(path)
        assert picture.format == "PNG" and picture.width > 2 * picture.height  # three charts side by side


def test_logging_benchmark_smoke():
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_logging.py"),
            "--smoke",
            "--sets",
            "off,csv+tensorboard+wandb",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| off |") or "+wandb |" in line]
    assert len(rows) == 2 and "+0.0%" in rows[0]


def test_a_failing_plot_is_reported_and_the_log_still_closes(tmp_path, monkeypatch):
    def broken(*args):
        raise ValueError("bad plot")

    monkeypatch.setattr(charts, "curves", broken)
    log = RunLog(tmp_path, quiet=True)
    log.validation(1, {"step": 1, "dice_fg": 0.5}, torch.nn.Linear(1, 1), None, False)
    with pytest.raises(ValueError, match="bad plot"):
        log.close()
    assert log.log_file is None and (tmp_path / "metrics.csv").is_file()


def test_a_failing_backend_is_dropped_with_a_warning(tmp_path):
    class Broken:
        name = "Flaky"
        closed = False

        def scalars(self, step, values):
            raise OSError("disk full")

        def close(self):
            self.closed = True

    log = RunLog(tmp_path, quiet=True)
    broken = Broken()
    log.backends.append(broken)
    log.scalars(1, {"train_loss": 0.5})
    log.scalars(2, {"train_loss": 0.4})  # the backend is gone: nothing raises
    log.close()
    assert not broken.closed and log.backends == []
    assert "Flaky logging stopped (OSError: disk full)" in (tmp_path / "train.log").read_text()


def test_only_rank_0_logs_under_two_processes(tmp_path, wandb_env):
    data = make_dataset(tmp_path / "d", count=10, size=(32, 32))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "unetseg", "train", "--nproc", "2", "--data", str(data), "--out", str(run)]
    command += [*TINY, "-b", "2", "-e", "1", "--val-rounds", "1", "--precision", "fp32", *ALL, "--quiet"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert len(read_rows(run)) == 1 and (run / "train.log").read_text().count("val dice_fg") == 1


def test_img_s_counts_training_time_not_the_validation_round(tmp_path, monkeypatch):
    """A validation round that takes 3 s must not enter the img/s of the window it closes."""
    from unetseg.training import loop

    validate = loop.validate

    def slow_validate(run):
        time.sleep(3.0)
        return validate(run)

    monkeypatch.setattr(loop, "validate", slow_validate)
    data = make_dataset(tmp_path / "data", count=12, size=(32, 32), values=(0, 255))
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "-v", "25", "-e", "1", "--quiet"]
    assert main([*args, "--width", "4", "-b", "4", "--workers", "1", "--val-rounds", "1"]) == 0
    (row,) = [r for r in read_rows(run) if r["img_s"]]
    # 8 training images in well under a second of training: with the 3 s round counted, it would read under 8/3
    assert float(row["img_s"]) > 8 / 3
