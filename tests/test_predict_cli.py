"""``unetseg predict`` on folders of mixed sizes: formats, probabilities, predictions.csv, tiling, TTA, errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from test_predict import blobs
from unetseg.cli import main
from unetseg.core.checkpoint import inference_checkpoint
from unetseg.data.classmap import ClassMap
from unetseg.models.unet import UNet
from unetseg.predict.segmenter import load


def save_checkpoint(path, values=(0, 255), outputs=None, background_bias=0.0):
    torch.manual_seed(0)
    model = UNet(1, outputs or len(values), width=4).eval()
    with torch.no_grad():
        model.outc.conv.weight.mul_(10)
        model.outc.conv.bias[0] += background_bias
    norm = {"scale": 255.0, "mean": [0.3], "std": [0.2]}
    torch.save(inference_checkpoint(model, ClassMap(list(values)), norm), path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    """Five images in two sizes, one of them in a second folder."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "more").mkdir()
    for i, size in enumerate([(96, 80), (64, 48), (96, 80), (64, 48)]):
        Image.fromarray(blobs(*size, seed=i)).save(tmp_path / "imgs" / f"im{i}.png")
    Image.fromarray(blobs(80, 60, seed=9)).save(tmp_path / "more" / "extra.jpg")
    return tmp_path


def read_table(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_folders_and_globs_of_mixed_sizes_match_the_python_api(images, tmp_path):
    ckpt = save_checkpoint(tmp_path / "m.pt", values=(0, 100, 200))
    out = tmp_path / "out"
    args = ["-i", str(images / "imgs"), str(images / "more" / "*.jpg"), "-o", str(out), "-b", "2", "--workers", "2"]
    assert main(["predict", "-m", ckpt, *args, "--quiet"]) == 0
    model = load(ckpt, device="cpu")
    sources = [*sorted((images / "imgs").iterdir()), images / "more" / "extra.jpg"]
    rows = read_table(out / "predictions.csv")
    assert [r["image"] for r in rows] == [str(p) for p in sources]
    for source, row in zip(sources, rows):
        mask = np.asarray(Image.open(out / f"{source.stem}.png"))
        assert np.array_equal(mask, model.predict(source))
        assert (int(row["height"]), int(row["width"])) == mask.shape
        for value, name in ((100, "class1"), (200, "class2")):
            assert float(row[f"fraction_{name}"]) == pytest.approx((mask == value).mean())
        assert "fraction_background" not in row


def test_index_color_overlay_and_probability_outputs(images, tmp_path):
    ckpt = save_checkpoint(tmp_path / "m.pt", values=(0, 100, 200))
    source = images / "imgs" / "im0.png"
    model = load(ckpt, device="cpu")
    index = model.predict(source, format="index")
    for fmt in ("index", "color"):
        out = tmp_path / fmt
        assert main(["predict", "-m", ckpt, "-i", str(source), "-o", str(out), "--format", fmt, "--quiet"]) == 0
        written = np.asarray(Image.open(out / "im0.png"))
        expected = index if fmt == "index" else np.array(model.class_map.colors, dtype=np.uint8)[index]
        assert np.array_equal(written, expected)
    out = tmp_path / "probs"
    assert main(["predict", "-m", ckpt, "-i", str(source), "-o", str(out), "--probs", "--overlay", "--quiet"]) == 0
    probs = np.load(out / "im0_probs.npy")
    assert probs.dtype == np.float16 and probs.shape == (3, 80, 96)
    assert np.allclose(probs, model.predict_proba(source), atol=1e-3)
    assert Image.open(out / "im0_overlay.png").size == (96, 80)


@pytest.mark.parametrize("outputs", [1, 2])
def test_binary_probabilities_are_16_bit_pngs(images, tmp_path, outputs):
    ckpt = save_checkpoint(tmp_path / "m.pt", outputs=outputs)
    source = images / "imgs" / "im1.png"
    out = tmp_path / "out"
    assert main(["predict", "-m", ckpt, "-i", str(source), "-o", str(out), "--probs", "--quiet"]) == 0
    picture = np.asarray(Image.open(out / "im1_probs.png"))
    assert picture.dtype == np.uint16 and picture.shape == (48, 64)
    foreground = load(ckpt, device="cpu").predict_proba(source)[-1]
    assert np.abs(picture / 65535 - foreground).max() < 1e-4


def test_tiles_and_tta_on_the_command_line_equal_the_api(images, tmp_path):
    ckpt = save_checkpoint(tmp_path / "m.pt")
    source = images / "imgs" / "im0.png"
    out = tmp_path / "out"
    args = ["-i", str(source), "-o", str(out), "--tile", "32", "--overlap", "0.25", "--tta", "--quiet"]
    assert main(["predict", "-m", ckpt, *args]) == 0
    expected = load(ckpt, device="cpu").predict(source, tile=32, overlap=0.25, tta="flips")
    assert np.array_equal(np.asarray(Image.open(out / "im0.png")), expected)
    assert main(["predict", "-m", ckpt, "-i", str(source), "-o", str(tmp_path / "full"), "--tta", "full"]) == 0
    full = load(ckpt, device="cpu").predict(source, tta="full")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "full" / "im0.png")), full)


def test_all_empty_predictions_warn(images, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt", background_bias=1000.0)
    assert main(["predict", "-m", ckpt, "-i", str(images / "imgs"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert "all 4 predicted masks are empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--tile", "8"], "--tile"),
        (["--overlap", "1"], "--overlap"),
        (["--threshold", "1.5"], "--threshold"),
        (["-i", "{images}/more/im0.png"], "would both be written"),
    ],
)
def test_bad_predict_options_exit_2(images, tmp_path, capsys, extra, needle):
    ckpt = save_checkpoint(tmp_path / "m.pt")
    (images / "more" / "im0.png").write_bytes((images / "imgs" / "im0.png").read_bytes())
    extra = [e.format(images=images) for e in extra]
    code = main(["predict", "-m", ckpt, "-i", str(images / "imgs" / "im0.png"), "-o", str(tmp_path / "o"), *extra])
    assert code == 2
    assert needle in capsys.readouterr().err


def test_images_of_many_sizes_do_not_pile_up_waiting_for_a_batch(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from unetseg.config import PredictConfig
    from unetseg.predict.pipeline import decoded_batches

    decoded = []

    class Sizes:
        """Decodes ``<height>.png`` to an empty image of that height: every input has its own size."""

        def prepare(self, path):
            decoded.append(path)
            return np.zeros((int(path.stem), 5, 1), np.uint8)

        def model_input(self, array, scale):
            return array

    paths = [tmp_path / f"{h}.png" for h in range(10, 40)]
    cfg = PredictConfig(model_path="m.pt", input=["x"], batch_size=4)
    with ThreadPoolExecutor(1) as pool:
        batches = decoded_batches(Sizes(), paths, cfg, pool, workers=1)
        first = next(batches)
        assert len(first) == 1 and len(decoded) < len(paths)  # a partial batch ran before everything was read
        positions = [d.position for batch in [first, *batches] for d in batch]
    assert sorted(positions) == list(range(30))
