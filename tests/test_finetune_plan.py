"""The plan knows the models: pretrained encoder weights choose a ResNet U-Net and a lower encoder learning rate."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import make_dataset
from test_encoder_weights import published_resnet, random_state
from test_plan_scale import big_blob, draw_set, plan_of
from unetseg.cli import main
from unetseg.models import create_model
from unetseg.training.optim import Schedule, build_optimizer
from unetseg.training.plan import ENCODER_LR_SCALE


def test_pretrained_weights_choose_a_resnet_u_net_and_a_slower_encoder(tmp_path):
    root = draw_set(tmp_path / "b", 12, (160, 128), big_blob)
    scratch = plan_of(root, budget_s=300)
    assert scratch["model"][0] == "unet" and scratch["encoder_lr_scale"][0] == 1.0
    pretrained = plan_of(root, budget_s=300, encoder_weights="imagenet")
    assert pretrained["model"][0] == "unet-resnet34" and "--encoder-weights given" in pretrained["model"][1]
    assert (
        pretrained["encoder_lr_scale"][0] == ENCODER_LR_SCALE
        and "pretrained encoder" in pretrained["encoder_lr_scale"][1]
    )
    assert "learning_rate=" not in pretrained["pilots"][0]  # trained weights: no higher rate is piloted


@pytest.mark.parametrize("name", ["unet-resnet18", "unet-resnet50"])
def test_encoder_learns_at_its_share_of_the_rate(name):
    model = create_model(name, trainable=True, n_channels=3, n_classes=2, width=8)
    optimizer = build_optimizer("adamw", model, 1e-3, 1e-4, 0.9, torch.device("cpu"), encoder_lr_scale=0.1)
    groups = optimizer.param_groups
    encoder = {id(p) for p in model.encoder.parameters()}
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    assert all(id(p) in encoder for p in groups[1]["params"])
    assert not any(id(p) in encoder for p in groups[0]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    schedule = Schedule(optimizer, "constant", 1e-3, 100, warmup_steps=0)
    schedule.set_step(10)
    assert groups[0]["lr"] == pytest.approx(1e-3) and groups[1]["lr"] == pytest.approx(1e-4)


def test_models_without_an_encoder_keep_one_group():
    model = create_model("unet", trainable=True, n_channels=1, n_classes=2, width=4)
    optimizer = build_optimizer("adamw", model, 1e-3, 1e-4, 0.9, torch.device("cpu"), encoder_lr_scale=0.1)
    assert len(optimizer.param_groups) == 1


def test_train_with_a_weights_file_plans_the_model_and_the_encoder_rate(tmp_path, capsys):
    torch.save(random_state(published_resnet(34)), tmp_path / "resnet34.pth")
    data = make_dataset(tmp_path / "data", count=6)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--encoder-weights", str(tmp_path / "resnet34.pth"), "--width", "8"]
    assert main([*args, "-e", "1", "-b", "2", "--workers", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "unet-resnet34" and config["encoder_lr_scale"] == ENCODER_LR_SCALE
    assert f"(encoder {ENCODER_LR_SCALE:g}x)" in out


def test_a_given_model_wins_over_the_plan(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", count=6)
    assert main(["plan", "--data", str(data), "--time-budget", "1m", "--model", "resunet"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("model "))
    assert "resunet" in row and "given (the plan would choose unet" in row
    assert "--model resunet" in out.splitlines()[-1]  # the command that trains with exactly this plan
