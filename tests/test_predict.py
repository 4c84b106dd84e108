"""Prediction API: input types, batching, tiling = whole image, test-time augmentation, output formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from unetseg.core.checkpoint import inference_checkpoint
from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError
from unetseg.models.unet import UNet
from unetseg.predict import tta
from unetseg.predict.segmenter import Segmenter
from unetseg.predict.tiling import gaussian_weights, sliding_window, window_starts

NORM = {"scale": 255.0, "mean": [0.3], "std": [0.2]}


def segmenter(channels: int = 1, values: tuple = (0, 255), outputs: int | None = None, **kwargs) -> Segmenter:
    """A random width-4 U-Net whose logits are spread out (outc x 10), so tiny differences would show."""
    torch.manual_seed(0)
    model = UNet(channels, outputs or len(values), width=4).eval()
    with torch.no_grad():
        model.outc.conv.weight.mul_(10)
    norm = {"scale": 255.0, "mean": [0.3] * channels, "std": [0.2] * channels} | kwargs.pop("norm", {})
    return Segmenter(inference_checkpoint(model, ClassMap(list(values)), norm, **kwargs), device="cpu")


def blobs(width: int = 96, height: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = Image.new("L", (width, height), 40)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, width - 16), rng.integers(0, height - 12)
        draw.ellipse([x, y, x + 15, y + 12], fill=200)
    return np.asarray(image)


def test_windows_cover_the_image_evenly():
    assert window_starts(100, 32, 0.5) == [0, 14, 27, 41, 54, 68]  # steps of at most 16: at least half shared
    assert window_starts(30, 32, 0.5) == [0] and window_starts(64, 32, 0.0) == [0, 32]
    weights = gaussian_weights(16, 12, torch.device("cpu"))
    assert weights.max() <= 1 and weights.min() > 0 and torch.equal(weights, weights.flip(0).flip(1))


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_blending_is_exact_for_a_pointwise_model(overlap):
    conv = torch.nn.Conv2d(2, 3, 1)
    x = torch.randn(2, 2, 50, 37)
    for out_device in (None, torch.device("cpu")):  # accumulate where chosen, and forced onto the host
        tiled = sliding_window(conv, x, 16, overlap, batch_size=3, out_device=out_device)
        assert torch.allclose(tiled, conv(x), atol=1e-5)


def test_tiled_prediction_equals_whole_image_prediction():
    seg = segmenter()
    image = blobs()
    whole = seg.predict_proba(image)
    assert np.allclose(seg.predict_proba(image, tile=128), whole, atol=1e-6)  # one window holding the image
    tiled = seg.predict_proba(image, tile=48, overlap=0.5, batch_size=3)
    assert whole.std() > 0.1  # the comparison below is not between two flat maps
    assert np.abs(tiled - whole).max() < 0.01
    assert (tiled.argmax(0) == whole.argmax(0)).mean() > 0.999


def symmetric_image(size: int = 48) -> np.ndarray:
    """A centred disk and a ring: unchanged by flips and quarter turns."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.hypot(yy, xx)
    return np.where((radius < 8) | ((radius > 14) & (radius < 18)), 220, 30).astype(np.uint8)


def test_tta_of_a_pointwise_model_changes_nothing():
    seg = segmenter()
    conv = torch.nn.Conv2d(1, 2, 1)
    seg.model = conv.eval()  # equivariant to flips and turns: every view gives the same answer
    image = blobs(64, 40)
    plain = seg.predict_proba(image)
    for mode in ("flips", "full"):
        assert np.allclose(seg.predict_proba(image, tta=mode), plain, atol=1e-6)


def test_tta_on_a_symmetric_input_is_symmetric():
    seg = segmenter()
    image = symmetric_image()
    plain = seg.predict_proba(image)[1]
    assert not np.allclose(plain, plain.T, atol=1e-3)  # the U-Net itself is not equivariant
    full = seg.predict_proba(image, tta="full")[1]
    for view in tta.MODES["full"]:
        turned = tta.apply(torch.from_numpy(full), view).numpy()
        assert np.allclose(turned, full, atol=1e-6)


# The views written out with NumPy alone, each as (forward, backward) on an (H, W) image / a (K, H, W) prediction.
NUMPY_VIEWS = {
    "flips": [
        (lambda a: a, lambda p: p),
        (lambda a: a[:, ::-1], lambda p: p[:, :, ::-1]),
        (lambda a: a[::-1, :], lambda p: p[:, ::-1, :]),
        (lambda a: a[::-1, ::-1], lambda p: p[:, ::-1, ::-1]),
    ],
}
NUMPY_VIEWS["full"] = NUMPY_VIEWS["flips"] + [
    (lambda a: np.rot90(a, 1), lambda p: np.rot90(p, -1, axes=(1, 2))),
    (lambda a: np.rot90(a, -1), lambda p: np.rot90(p, 1, axes=(1, 2))),
    (lambda a: np.rot90(a, 1)[:, ::-1], lambda p: np.rot90(p[:, :, ::-1], -1, axes=(1, 2))),
    (lambda a: np.rot90(a, -1)[:, ::-1], lambda p: np.rot90(p[:, :, ::-1], 1, axes=(1, 2))),
]


@pytest.mark.parametrize("mode", ["flips", "full"])
def test_tta_is_the_mean_of_the_transformed_predictions(mode):
    seg = segmenter(values=(0, 1, 2))
    image = blobs(64, 40)  # not square: turned views have the other shape
    views = [back(seg.predict_proba(np.ascontiguousarray(forward(image)))) for forward, back in NUMPY_VIEWS[mode]]
    expected = np.mean(views, axis=0)
    assert len(views) == len(tta.views(mode)) and expected.shape == (3, 40, 64)
    assert not np.allclose(views[0], views[1], atol=1e-3)  # the model is not flip-equivariant: the mean matters
    assert np.allclose(seg.predict_proba(image, tta=mode), expected, atol=1e-6)
    masks = seg.predict(image, tta=mode, format="index")
    assert np.array_equal(masks, expected.argmax(0))


def test_every_input_type_gives_the_same_mask(tmp_path):
    seg = segmenter()
    image = blobs()
    Image.fromarray(image).save(tmp_path / "a.png")
    expected = seg.predict(image)
    assert set(np.unique(expected).tolist()) <= {0, 255} and expected.shape == image.shape
    for variant in (
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        Image.open(tmp_path / "a.png"),
        image[:, :, None],
        image.astype(np.float32) / 255,  # floats in [0, 1]: a share of the training range
        np.repeat(image[:, :, None], 3, axis=2),  # RGB to a grey model: luma of equal channels
    ):
        assert np.array_equal(seg.predict(variant), expected)


def test_16_bit_images_for_a_16_bit_model():
    seg8, seg16 = segmenter(), segmenter(norm={"scale": 255.0 * 16})
    image = blobs()
    assert np.array_equal(seg16.predict(image.astype(np.uint16) * 16), seg8.predict(image))


def test_a_list_is_predicted_in_batches_of_same_size_images():
    seg = segmenter()
    images = [blobs(seed=1), blobs(48, 32, seed=2), blobs(seed=3)]
    calls = []
    seg.model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    masks = seg.predict(images)
    assert sorted(calls) == [1, 2]  # two forward passes: the two 96x80 images together
    for mask, image in zip(masks, images):
        assert np.array_equal(mask, seg.predict(image))
    probs = seg.predict_proba(images[:2], batch_size=1)
    assert [p.shape for p in probs] == [(2, 80, 96), (2, 32, 48)]


def test_output_formats_and_sigmoid_threshold():
    seg = segmenter(values=(0, 100, 200))
    image = blobs()
    index = seg.predict(image, format="index")
    assert np.array_equal(seg.predict(image), np.array([0, 100, 200])[index])
    colors = seg.predict(image, format="color")
    assert colors.shape == (*image.shape, 3) and np.array_equal(colors, np.array(seg.class_map.colors)[index])
    binary = segmenter(outputs=1)
    probs = binary.predict_proba(image)
    assert probs.shape == (1, *image.shape)
    for threshold in (0.3, 0.7):
        assert np.array_equal(binary.predict(image, threshold=threshold), np.where(probs[0] > threshold, 255, 0))


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"tile": 8}, "--tile"), ({"overlap": 1.0}, "--overlap"), ({"tta": "rot"}, "--tta"), ({"format": "x"}, "format")],
)
def test_bad_prediction_options_are_user_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        segmenter().predict(blobs(), **kwargs)


def test_unsupported_inputs_are_user_errors():
    seg = segmenter()
    with pytest.raises(UserError, match="cannot predict on a dict"):
        seg.predict({})
    with pytest.raises(UserError, match="not supported"):
        seg.predict(np.full((8, 8), -3.0))


def test_class_indices_equal_argmax_including_ties():
    probs = torch.rand(2, 4, 9, 7)
    probs[:, 3] = probs[:, 1]  # equal scores: the first class wins, as with argmax
    probs[0, :, 0, 0] = 0.25
    assert torch.equal(segmenter().to_index(probs), probs.argmax(1).to(torch.uint8))
