"""The plan's resolution and flips from the shapes in the masks, and scoring at the images' own size."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image, ImageDraw

from unetseg.cli import main
from unetseg.core.checkpoint import inference_checkpoint
from unetseg.data.augment import augment_batch, get_spec
from unetseg.data.classmap import ClassMap
from unetseg.data.prepare import prepare
from unetseg.data.shapes import measure
from unetseg.models.unet import UNet
from unetseg.training.plan import make_plan


def draw_set(root, count: int, size: tuple[int, int], draw_mask, seed: int = 0):
    """Images whose grey level encodes the mask (plus noise), masks drawn by ``draw_mask(draw, rng)``."""
    rng = np.random.default_rng(seed)
    for sub in ("imgs", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mask = Image.new("L", size, 0)
        draw_mask(ImageDraw.Draw(mask), rng)
        m = np.asarray(mask)
        image = np.clip(60 + 120 * (m > 0) + rng.normal(0, 10, m.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "imgs" / f"i{i:02d}.png")
        Image.fromarray((m > 0).astype(np.uint8) * 255).save(root / "masks" / f"i{i:02d}.png")
    return root


def big_blob(draw, rng):
    x, y = rng.integers(100, 200), rng.integers(90, 150)
    draw.ellipse([x - 80, y - 70, x + 80, y + 70], fill=1)


def thin_lines(draw, rng):
    for _ in range(4):
        x = int(rng.integers(10, 290))
        draw.line([x, 0, int(rng.integers(10, 290)), 239], fill=1, width=2)


def lower_half(draw, rng):
    top = int(rng.integers(130, 160))
    draw.rectangle([0, top, 319, 239], fill=1)


def plan_of(root, budget_s: float | None = 300.0, **fixed) -> dict:
    data = prepare(str(root), None, None, None, None, None, 1.0, 10, 0, 1)
    return {n: (v, r) for n, v, r in make_plan(data, torch.device("cpu"), budget_s, fixed)}


def test_thickness_measures_lines_and_discs(tmp_path):
    lines = prepare(str(draw_set(tmp_path / "l", 4, (300, 240), thin_lines)), None, None, None, None, None, 1.0, 0, 0)
    blobs = prepare(str(draw_set(tmp_path / "b", 4, (300, 240), big_blob)), None, None, None, None, None, 1.0, 0, 0)
    assert measure(lines.train, 2).classes[1].thickness <= 4  # 2 px lines
    assert measure(blobs.train, 2).classes[1].thickness >= 60  # discs of 140-160 px
    assert measure(blobs.train, 2).classes[1].extent > 0.4


def test_large_objects_train_downscaled_thin_lines_at_full_resolution(tmp_path):
    blobs = plan_of(draw_set(tmp_path / "b", 40, (300, 240), big_blob))
    assert blobs["scale"][0] < 1 and "train at" in blobs["scale"][1]
    # The crop after downscaling holds (almost) the whole image, not a corner of it.
    assert blobs["patch_size"][0] is None or blobs["patch_size"][0] >= 240 * blobs["scale"][0]
    lines = plan_of(draw_set(tmp_path / "l", 40, (300, 240), thin_lines))
    assert lines["scale"][0] == 1.0 and "full resolution" in lines["scale"][1]
    assert "2 px" in lines["scale"][1] or "1 px" in lines["scale"][1] or "3 px" in lines["scale"][1]


def test_structures_several_pixels_thick_train_downscaled_when_the_budget_asks(tmp_path):
    def bars(draw, rng):  # 9 px wide lines: thin for augmentation, thick enough to survive half the resolution
        for _ in range(3):
            x = int(rng.integers(20, 580))
            draw.line([x, 0, int(rng.integers(20, 580)), 479], fill=1, width=9)

    plan = plan_of(draw_set(tmp_path / "w", 24, (600, 480), bars))
    scale, why = plan["scale"]
    assert 0.5 <= scale < 1 and "train at" in why  # 40 epochs of 600x480 images do not fit 5 minutes
    assert plan["augment"][0] == "light"  # still a thin structure for the warps and the crops


def test_user_scale_and_patch_size_are_constraints(tmp_path):
    root = draw_set(tmp_path / "b", 40, (300, 240), big_blob)
    assert plan_of(root, patch_size=64)["scale"][0] == 1.0  # crops asked for: at the images' own resolution
    data = prepare(str(root), None, None, None, None, None, 0.5, 10, 0, 1)  # the data arrive at the user's scale
    plan = {n: v for n, v, _ in make_plan(data, torch.device("cpu"), 300.0, {"scale": 0.5})}
    assert plan["patch_size"] is None or plan["patch_size"] <= 128  # planned for 150x120 images, not 300x240


def test_flips_keep_images_upright_only_where_the_data_has_an_up(tmp_path):
    ground = plan_of(draw_set(tmp_path / "g", 12, (320, 240), lower_half))
    assert ground["flips"][0] == "horizontal" and "up and a down" in ground["flips"][1]
    blobs = plan_of(draw_set(tmp_path / "b", 12, (300, 240), big_blob))
    assert blobs["flips"][0] == "all"


def test_horizontal_flips_never_turn_an_image_upside_down():
    y = torch.zeros(64, 16, 16, dtype=torch.long)
    y[:, :4] = 1  # class 1 along the top edge
    x = y.float().unsqueeze(1)
    spec = get_spec("flips", "horizontal")
    _, out = augment_batch(x, y, seed=3, spec=spec)
    assert (out[:, :4] == 1).all() and (out[:, 4:] == 0).all()
    _, turned = augment_batch(x, y, seed=3, spec=get_spec("flips", "all"))
    assert not (turned[:, :4] == 1).all()  # the same draw with every orientation moves the top edge


def test_evaluate_scores_a_downscaled_model_at_the_images_own_size(tmp_path):
    root = draw_set(tmp_path / "d", 3, (60, 44), lambda d, r: d.rectangle([10, 10, 40, 30], fill=1))
    torch.manual_seed(0)
    norm = {"scale": 255.0, "mean": [0.5], "std": [0.25]}
    ckpt = inference_checkpoint(UNet(1, 2, width=4), ClassMap([0, 255]), norm, scale=0.5)
    torch.save(ckpt, tmp_path / "m.pt")
    out = tmp_path / "r.json"
    args = ["evaluate", "-m", str(tmp_path / "m.pt"), "--data", str(root), "--json", str(out)]
    assert main([*args, "--report", str(tmp_path / "page")]) == 0
    assert (tmp_path / "page" / "report.html").stat().st_size > 0  # its worst-image panels line up at full size
    report = json.loads(out.read_text())
    truth = sum(int((np.asarray(Image.open(p)) > 0).sum()) for p in sorted((root / "masks").iterdir()))
    assert report["scale"] == 0.5
    assert report["classes"][1]["pixels_true"] == truth  # 31 x 21 per image, not the 15 x 10 of the half size
    assert sum(c["pixels_true"] for c in report["classes"]) == 3 * 60 * 44


def test_augmentation_is_light_for_many_images_and_few_epochs(tmp_path):
    def disc(draw, rng):  # about 21 px thick: not a thin structure
        x, y = rng.integers(24, 72), rng.integers(24, 48)
        draw.ellipse([x - 18, y - 18, x + 18, y + 18], fill=1)

    many = draw_set(tmp_path / "many", 170, (96, 72), disc)
    assert plan_of(many, budget_s=20)["augment"][0] == "light"  # ~9 epochs of 150 images
    assert plan_of(many, budget_s=3600)["augment"][0] == "default"  # thousands of epochs: variety pays
    few = draw_set(tmp_path / "few", 20, (96, 72), disc)
    chosen, why = plan_of(few, budget_s=20)["augment"]
    assert chosen == "default" and "fewer than" in why
    assert plan_of(few, budget_s=20)["foreground_crops"][0] == 0.33  # small objects: a third of crops on them


def test_thin_structures_train_on_light_augmentation_and_uniform_crops(tmp_path):
    lines = plan_of(draw_set(tmp_path / "l", 20, (300, 240), thin_lines))
    assert lines["augment"][0] == "light" and "px thick" in lines["augment"][1]
    assert lines["foreground_crops"][0] == 0.0 and "uniform crops" in lines["foreground_crops"][1]
    blobs = plan_of(draw_set(tmp_path / "b", 20, (300, 240), big_blob))
    assert blobs["augment"][0] == "default" and blobs["foreground_crops"][0] == 0.33


def test_few_images_on_a_short_budget_train_downscaled_for_steps(tmp_path):
    def disc(draw, rng):  # about 28 px thick: neither thin nor large
        x, y = rng.integers(40, 216, 2)
        draw.ellipse([x - 15, y - 15, x + 15, y + 15], fill=1)

    few = draw_set(tmp_path / "few", 20, (256, 256), disc)
    scale, why = plan_of(few, budget_s=300)["scale"]
    assert scale == 0.5 and "2000 steps of 8 of 18 images" in why  # 18 train: 40 passes would be 90 steps
    scale, why = plan_of(few, budget_s=3600)["scale"]
    assert scale == 1.0 and "full resolution" in why  # an hour affords the steps at full size
