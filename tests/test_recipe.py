"""Dataset-driven plan, cross-validation folds, and the ensemble checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import make_dataset
from unetseg.cli import main
from unetseg.core.checkpoint import build_model, load_checkpoint
from unetseg.data.prepare import prepare
from unetseg.data.samples import fold_indices
from unetseg.models.ensemble import Ensemble
from unetseg.training.plan import make_plan

TINY = ["--width", "4", "-e", "1", "-b", "2", "--workers", "1", "--quiet", "--no-save-epochs"]


def test_folds_cover_every_image_once():
    folds = [fold_indices(11, 4, i, seed=2)[1] for i in range(4)]
    assert sorted(i for f in folds for i in f) == list(range(11))
    train, val = fold_indices(11, 4, 0, seed=2)
    assert not set(train) & set(val)


def test_plan_chooses_whole_images_class_weights_and_epochs_for_a_budget(tmp_path):
    root = make_dataset(tmp_path / "d", count=6, size=(48, 48), values=(0, 1, 2))
    data = prepare(str(root), None, None, None, None, None, 1.0, 0, 0)
    chosen = make_plan(data, torch.device("cpu"), time_budget_s=20)
    plan, why = {n: v for n, v, _ in chosen}, {n: r for n, _, r in chosen}
    assert plan["patch_size"] is None and plan["width"] == 16 and plan["batch_size"] == 8  # short budget: narrow
    shares = np.bincount(np.concatenate([s.mask.ravel() for s in data.train]), minlength=3) / sum(
        s.mask.size for s in data.train
    )
    held = np.array([[(s.mask == k).any() for k in range(3)] for s in data.train]).mean(axis=0)
    assert plan["class_weights"] == ("auto" if ((shares < 0.05) & (held < 0.25)).any() else "none")
    assert plan["epochs"] == 100_000 and "budget ends the run" in why["epochs"]  # the budget, not a count
    assert {n: v for n, v, _ in make_plan(data, torch.device("cpu"))}["width"] == 32  # no budget: the wider model


def halves_and_dots(root, count: int, dots: int):
    """Masks that are half class 1; the first ``dots`` of them also hold a 2 x 2 dot of class 2 (0.25% of the
    pixels of an image)."""
    for sub in ("imgs", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mask = np.zeros((40, 40), np.uint8)
        mask[:, 20:] = 1
        if i < dots:
            mask[5:7, 5:7] = 2
        Image.fromarray((mask * 100).astype(np.uint8)).save(root / "imgs" / f"i{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"i{i}.png")
    return root


@pytest.mark.parametrize(
    "dots, weights, why",
    [
        (1, "auto", "rare in pixels and in images"),  # class 2 in 1 of 5 images
        (5, "none", "in at least 25% of the images"),  # in every image: seen in every batch
        (0, "none", "no class below 5%"),
    ],
)
def test_plan_weights_the_loss_only_for_a_class_rare_in_pixels_and_in_images(tmp_path, dots, weights, why):
    root = halves_and_dots(tmp_path / "d", 5, dots)
    data = prepare(str(root), None, None, None, None, None, 1.0, 0, 0)
    chosen = {n: (v, r) for n, v, r in make_plan(data, torch.device("cpu"))}
    assert chosen["class_weights"][0] == weights and why in chosen["class_weights"][1]
    assert "image_sampling" not in chosen  # balanced draws are the user's choice: they cost MSRC 0.014 mIoU


def test_plan_spaces_validation_rounds_by_their_cost(tmp_path):
    """Validation of whole images is kept near a tenth of the training time: a validation set as large as the
    training patches validates every few epochs, a small one several times per epoch."""
    big = make_dataset(tmp_path / "big", count=16, size=(256, 256))
    small = make_dataset(tmp_path / "small", count=40, size=(64, 64))
    few = prepare(str(small), None, None, str(big), None, None, 1.0, 0, 0)  # 40 train 64x64, 16 val 256x256
    plan = {n: v for n, v, _ in make_plan(few, torch.device("cpu"))}
    assert plan["val_rounds"] == 1 and plan["val_every"] > 1
    many = prepare(str(big), None, None, str(small), None, None, 1.0, 0, 0)  # 16 train 256x256, 40 val 64x64
    plan = {n: v for n, v, _ in make_plan(many, torch.device("cpu"))}
    assert plan["val_every"] == 1 and plan["val_rounds"] >= 1
    # The user's patch size is a constraint: 32 px crops make an epoch 64x cheaper, so validation comes less often.
    small_crops = {n: v for n, v, _ in make_plan(many, torch.device("cpu"), fixed={"patch_size": 32})}
    assert (small_crops["val_every"], -small_crops["val_rounds"]) > (plan["val_every"], -plan["val_rounds"])


def test_train_plans_by_default_and_given_options_win(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", count=6, size=(48, 48))
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--width", "4", "-e", "1", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "plan (from the data and the device)" in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["width"] == 4 and saved["batch_size"] == 8 and saved["val_every"] >= 1
    assert not list((out / "checkpoints").glob("epoch_*.pt"))  # last.pt and best.pt only, unless --save-epochs
    fixed = ["--out", str(tmp_path / "fixed"), "--no-plan", "-e", "1", "--width", "4", "--workers", "1", "--quiet"]
    assert main(["train", "--data", str(root), *fixed]) == 0
    assert "plan (from" not in capsys.readouterr().out


def test_plan_command_prints_a_train_command(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", count=4, size=(40, 40))
    assert main(["plan", "--data", str(root)]) == 0
    assert "train with: unetseg train --data" in capsys.readouterr().out


def test_cross_validation_writes_scores_and_an_ensemble_that_predicts(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", count=9, size=(32, 32))
    out = tmp_path / "cv"
    assert main(["train", "--data", str(root), "--folds", "3", "--out", str(out), *TINY]) == 0
    report = json.loads((out / "cv.json").read_text())
    assert report["folds"] == 3 and len(report["dice_fg_per_fold"]) == 3
    assert np.array(report["confusion"]).sum() == 9 * 32 * 32  # every image scored once, out of fold
    masks = tmp_path / "pred"
    assert main(["predict", "-m", str(out / "ensemble.pt"), "-i", str(root / "imgs"), "-o", str(masks), "--quiet"]) == 0
    assert set(np.unique(np.asarray(Image.open(masks / "img000.png"))).tolist()) <= {0, 255}
    assert main(["evaluate", "-m", str(out / "ensemble.pt"), "--data", str(root)]) == 0


def test_one_fold_at_a_time_then_the_last_one_completes_the_ensemble(tmp_path):
    root = make_dataset(tmp_path / "d", count=6, size=(32, 32))
    out = tmp_path / "cv"
    assert main(["train", "--data", str(root), "--folds", "2", "--fold", "1", "--out", str(out), *TINY]) == 0
    assert (out / "fold_1" / "oof.json").exists() and not (out / "ensemble.pt").exists()
    assert main(["train", "--data", str(root), "--folds", "2", "--fold", "0", "--out", str(out), *TINY]) == 0
    assert (out / "ensemble.pt").exists()


def test_ensemble_averages_member_probabilities_under_their_own_normalisation():
    torch.manual_seed(0)
    specs = [{"name": "unet", "n_channels": 1, "n_classes": 3, "bilinear": False, "width": 4}] * 2
    norms = [{"scale": 255.0, "mean": [0.5], "std": [0.2]}, {"scale": 255.0, "mean": [0.3], "std": [0.4]}]
    ensemble = Ensemble(specs, norms, norms[0]).eval()
    raw = torch.rand(1, 1, 24, 24)
    expected = (
        sum(member((raw - n["mean"][0]) / n["std"][0]).softmax(1) for member, n in zip(ensemble.members, norms)) / 2
    )
    with torch.no_grad():
        got = ensemble((raw - 0.5) / 0.2).softmax(1)
    assert torch.allclose(got, expected, atol=1e-5)


def test_ensemble_checkpoint_round_trip(tmp_path):
    root = make_dataset(tmp_path / "d", count=6, size=(32, 32))
    out = tmp_path / "cv"
    assert main(["train", "--data", str(root), "--folds", "2", "--out", str(out), *TINY]) == 0
    model = build_model(load_checkpoint(out / "ensemble.pt"))
    assert isinstance(model, Ensemble) and len(model.members) == 2


def test_ensemble_exports_to_onnx_with_the_same_masks(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    root = make_dataset(tmp_path / "d", count=6, size=(32, 32))
    out = tmp_path / "cv"
    assert main(["train", "--data", str(root), "--folds", "2", "--out", str(out), *TINY]) == 0
    onnx_file = tmp_path / "ensemble.onnx"
    assert main(["export", "-m", str(out / "ensemble.pt"), "--format", "onnx", "-o", str(onnx_file)]) == 0
    image = np.asarray(Image.open(root / "imgs" / "img000.png"))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: image[None, :, :, None]})[0]
    ckpt = load_checkpoint(out / "ensemble.pt")
    with torch.no_grad():
        x = (torch.from_numpy(image).float()[None, None] / 255 - ckpt["norm"]["mean"][0]) / ckpt["norm"]["std"][0]
        expected = build_model(ckpt)(x).numpy()
    assert np.abs(logits - expected).max() < 1e-4
