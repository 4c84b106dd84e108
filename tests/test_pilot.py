"""Pilot runs: which choices the plan leaves open, their bounded share of the budget, and the winner continuing."""

from __future__ import annotations

import json

import pytest
import yaml

import unetseg
from conftest import slow_after
from test_plan_scale import big_blob, draw_set, plan_of, thin_lines
from unetseg.errors import UserError
from unetseg.training import plan as plan_module
from unetseg.training.pilot import parse_candidates
from unetseg.training.rundir import open_run_dir


def candidates(plan: dict) -> list[str]:
    return [p.label for p in parse_candidates(plan["pilots"][0])]


def test_pilots_try_what_the_rules_trade_not_what_they_require(tmp_path):
    # Half an hour: 40 images get their steps at the objects' scale, so the budget does not push it to the floor.
    blobs = plan_of(draw_set(tmp_path / "b", 40, (300, 240), big_blob), budget_s=1800)
    assert blobs["scale"][0] < 1  # downscaled for the objects' size: a judgement, so a pilot tries higher
    labels = candidates(blobs)
    assert labels[0] == "planned"
    higher = [p for p in parse_candidates(blobs["pilots"][0]) if "scale" in p.options]
    assert len(higher) == 1 and blobs["scale"][0] < higher[0].options["scale"] <= 1.0
    assert higher[0].options.get("patch_size", blobs["patch_size"][0]) != blobs["patch_size"][0]  # crops follow
    assert "learning_rate=0.003" in labels  # AdamW from scratch: the rate is tried too
    lines = plan_of(draw_set(tmp_path / "l", 40, (300, 240), thin_lines), budget_s=600)
    assert lines["scale"][0] == 1.0  # 2-px lines need full resolution: no lower or higher scale to try
    assert not any("scale=" in label for label in candidates(lines))


def test_options_the_user_gave_are_not_piloted(tmp_path):
    root = draw_set(tmp_path / "b", 40, (300, 240), big_blob)
    assert plan_of(root, budget_s=600, learning_rate=1e-3)["pilots"][0].count("learning_rate") == 0
    given = plan_of(root, budget_s=600, learning_rate=1e-3, patch_size=128)  # --patch-size: full resolution
    assert given["pilots"][0] == "none"
    assert plan_of(root, budget_s=600, pilot=False)["pilots"] == ("none", "--no-pilot given")
    assert plan_of(root, budget_s=None)["pilots"][0] == "none"  # no budget to share
    assert plan_of(root, budget_s=600, folds=5)["pilots"][0] == "none"  # each fold trains the plan itself
    assert plan_of(root, budget_s=600, nproc=2)["pilots"][0] == "none"
    pretrained = plan_of(root, budget_s=600, model="unet-resnet18", encoder_weights="imagenet")
    assert "learning_rate=" not in pretrained["pilots"][0]


@pytest.mark.parametrize("budget_s", slow_after([120, 600, 7200, 300, 400, 900, 1800], 3))
def test_pilots_share_at_most_a_fifth_of_the_budget(tmp_path, budget_s):
    plan = plan_of(draw_set(tmp_path / "b", 40, (300, 240), big_blob), budget_s=budget_s)
    count = len(candidates(plan))
    if count:
        each = plan_module.pilot_seconds(budget_s, count)
        assert count * each <= plan_module.PILOT_SHARE * budget_s + 1e-9
        assert each >= plan_module.MIN_PILOT_S
        assert f"{count} pilots of {each:.0f} s" in plan["pilots"][1]
    else:  # too short a budget for pilots long enough to tell recipes apart
        assert budget_s * plan_module.PILOT_SHARE / 2 < plan_module.MIN_PILOT_S


def test_parse_candidates():
    parsed = parse_candidates("planned | scale=0.75 patch_size=192 | learning_rate=0.003")
    assert [p.options for p in parsed] == [{}, {"scale": 0.75, "patch_size": 192}, {"learning_rate": 0.003}]
    assert parse_candidates("none") == []


def test_a_run_directory_with_only_the_pilots_is_not_a_previous_run(tmp_path):
    run = tmp_path / "run"
    (run / "pilots" / "0-planned").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    lock, _ = open_run_dir(run, False, False)  # this run's own pilots: accepted
    lock.release()
    (run / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(UserError, match="exists and is not empty"):
        open_run_dir(run, False, False)


@pytest.mark.slow
def test_pilots_run_and_the_winner_continues_from_its_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plan_module, "MIN_PILOT_S", 0.5)  # pilots of a second or two on tiny data
    root = draw_set(tmp_path / "b", 16, (150, 120), big_blob)
    out = tmp_path / "run"
    result = unetseg.train(data=root, time_budget="16s", width=4, out=out, seed=3)
    assert result.exit_code == 0 and result.best_score is not None
    record = json.loads((out / "pilots" / "pilots.json").read_text())
    pilots = record["pilots"]
    assert [p["label"] for p in pilots][0] == "planned" and len(pilots) >= 2
    assert sum(p["budget_s"] for p in pilots) <= plan_module.PILOT_SHARE * 16 + 1e-6
    scored = [p for p in pilots if p["score"] is not None]
    winner = max(scored, key=lambda p: p["score"])
    assert record["winner"] == winner["label"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["load"] == winner["checkpoint"]  # the main run starts from the winner's weights
    assert all(config[name] == value for name, value in winner["options"].items())
    assert config["time_budget"] == "16s"  # the pilots' time counts against the user's budget
    printed = capsys.readouterr().out
    assert "<- continues" in printed and winner["label"] in printed


def test_no_pilot_trains_the_plan_directly(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "MIN_PILOT_S", 0.5)
    root = draw_set(tmp_path / "b", 8, (96, 80), big_blob)
    out = tmp_path / "run"
    result = unetseg.train(data=root, time_budget="4s", width=4, out=out, pilot=False)
    assert result.exit_code == 0
    assert not (out / "pilots").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["load"] is None
