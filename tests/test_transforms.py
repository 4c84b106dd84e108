"""Mask-aware augmentation on the device."""

from __future__ import annotations

import pytest
import torch

from unetseg.data.augment import PRESETS, AugmentSpec, augment_batch, get_spec
from unetseg.data.classmap import IGNORE_INDEX
from unetseg.errors import UserError

GEOMETRY = AugmentSpec(affine_p=1.0, elastic_p=0.5)


def blobs(batch: int = 4, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.zeros(batch, size, size, dtype=torch.long)
    y[:, 10:30, 12:26] = 1
    y[:, 32:44, 30:40] = 2
    x = (y.float() / 2).unsqueeze(1).repeat(1, 3, 1, 1)  # the image encodes the mask
    return x, y


def test_geometry_moves_image_and_mask_together():
    x, y = blobs()
    ax, ay = augment_batch(x, y, seed=1, spec=GEOMETRY)
    labelled = ay != IGNORE_INDEX
    agree = (torch.round(ax[:, 0] * 2).long() == ay)[labelled].float().mean()
    assert agree > 0.95  # only the bilinear edges of each blob can disagree
    assert not torch.equal(ay, y)


def test_pixels_from_outside_become_ignore_and_ignored_stay_ignored():
    x, y = blobs()
    y[:, :4] = IGNORE_INDEX
    _, flipped = augment_batch(x, y, seed=3, spec=AugmentSpec())
    assert (flipped == IGNORE_INDEX).sum() == (y == IGNORE_INDEX).sum()  # flips keep every pixel
    spec = AugmentSpec(affine_p=1.0, scale=(0.5, 0.5), rotate_deg=0, shift=0.0)
    _, shrunk = augment_batch(x, y, seed=3, spec=spec)
    assert (shrunk == IGNORE_INDEX).float().mean() > 0.5  # zooming out brings in the outside


def test_intensity_changes_images_only_and_stays_in_range():
    x, y = blobs()
    spec = AugmentSpec(flips=False, intensity_p=1.0, gamma_p=1.0, noise_p=1.0, blur_p=1.0)
    ax, ay = augment_batch(x, y, seed=5, spec=spec)
    assert torch.equal(ay, y) and not torch.equal(ax, x)
    assert ax.min() >= 0 and ax.max() <= 1


@pytest.mark.parametrize("name", ["flips", "default", "heavy"])
def test_same_seed_same_result_and_a_slice_of_the_global_batch_matches(name):
    x, y = blobs(batch=4)
    spec = get_spec(name)
    whole = augment_batch(x, y, seed=9, spec=spec)
    again = augment_batch(x, y, seed=9, spec=spec)
    assert torch.equal(whole[0], again[0]) and torch.equal(whole[1], again[1])
    part = augment_batch(x[2:], y[2:], seed=9, offset=2, total=4, spec=spec)
    assert torch.allclose(part[0], whole[0][2:], atol=1e-6) and torch.equal(part[1], whole[1][2:])


def test_presets_and_unknown_name():
    assert PRESETS["none"] is None
    with pytest.raises(UserError, match="known: none"):
        get_spec("extreme")
