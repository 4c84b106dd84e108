"""Training batches: reproducible order and crops, foreground-centred crops, sharding across processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.data.prepare import repeat_factors
from unetseg.data.sampler import TrainBatches, prefetch
from unetseg.data.samples import Sample


def samples(count: int = 8, size: int = 128) -> list[Sample]:
    out = []
    for i in range(count):
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[100 + i % 4 : 108 + i % 4, 5:13] = 1  # one small object in a corner
        out.append(Sample(f"s{i}", np.full((size, size, 1), i, dtype=np.uint8), mask))
    return out


def test_foreground_centred_crops_always_hold_the_object():
    batches = TrainBatches(samples(), 4, (32, 32), seed=0, foreground_share=1.0)
    crops = [m for _, masks in batches.epoch(0) for m in masks]
    assert len(crops) == 8 and all((m == 1).any() for m in crops)
    random = TrainBatches(samples(), 4, (32, 32), seed=0, foreground_share=0.0)
    hits = [bool((m == 1).any()) for _, masks in random.epoch(0) for m in masks]
    assert not all(hits)  # plain random crops of a 128 px image mostly miss a corner object


def test_centred_crops_draw_the_class_first_so_a_rare_class_is_seen():
    """Class 1 covers half of each image, class 2 a 4 x 4 dot (0.1%): centred crops hold the dot about half the
    time, where centring on a random foreground pixel would hold it about 2 times in 1000."""
    items = []
    for i in range(40):
        mask = np.zeros((128, 128), dtype=np.uint8)
        mask[:, 64:] = 1
        mask[10:14, 10:14] = 2
        items.append(Sample(f"s{i}", np.zeros((128, 128, 1), dtype=np.uint8), mask))
    batches = TrainBatches(items, 8, (16, 16), seed=1, foreground_share=1.0)
    crops = [m for _, masks in batches.epoch(0) for m in masks]
    with_dot = sum(bool((m == 2).any()) for m in crops)
    assert len(crops) == 40 and 10 <= with_dot <= 30


def test_images_holding_a_class_few_images_hold_are_drawn_more_often():
    """Class 2 is in 1 image of 16: with share 0.25 that image's factor is sqrt(0.25 / (1/16)) = 2, the others 1."""
    items = []
    for i in range(16):
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[:8] = 1
        if i == 5:
            mask[20:24, 20:24] = 2
        items.append(Sample(f"s{i}", np.full((32, 32, 1), i, dtype=np.uint8), mask))
    factors = repeat_factors(items, 3, 0.25)
    assert factors.tolist() == pytest.approx([2.0 if i == 5 else 1.0 for i in range(16)])
    balanced = TrainBatches(items, 4, (32, 32), seed=0, repeats=factors)
    drawn = np.bincount([int(x[0, 0, 0]) for e in range(200) for xs, _ in balanced.epoch(e) for x in xs], minlength=16)
    assert drawn.sum() == 200 * 16  # an epoch still draws as many images as there are
    share = drawn[5] / drawn.sum()
    assert 1.6 / 17 < share < 2.4 / 17  # twice as often as each of the 15 others: 2 / 17
    assert repeat_factors(items, 3, 1 / 16).tolist() == [1.0] * 16  # a class in 1 of 16 is not rare below 1/16


def test_equal_repeat_factors_draw_the_same_batches_as_uniform_sampling():
    plain = TrainBatches(samples(), 2, (32, 32), seed=3)
    equal = TrainBatches(samples(), 2, (32, 32), seed=3, repeats=np.full(8, 1.5))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(plain.epoch(1), equal.epoch(1)))


def test_same_epoch_same_batches_and_resume_from_a_batch():
    batches = TrainBatches(samples(), 2, (32, 32), seed=4)
    first = [x for x, _ in batches.epoch(3)]
    again = [x for x, _ in batches.epoch(3, start=2)]
    assert len(first) == 4 and len(again) == 2
    assert all(torch.equal(a, b) for a, b in zip(first[2:], again))
    assert not torch.equal(first[0], next(batches.epoch(4))[0])


def test_two_ranks_together_see_the_global_batch_of_one_process():
    data = samples(count=9)
    one = TrainBatches(data, 4, (32, 32), seed=1)
    ranks = [TrainBatches(data, 2, (32, 32), seed=1, rank=r, world=2) for r in range(2)]
    assert len(one) == len(ranks[0]) == 2
    compared = 0
    for whole, part0, part1 in zip(one.epoch(0), ranks[0].epoch(0), ranks[1].epoch(0)):
        assert torch.equal(whole[0], torch.cat([part0[0], part1[0]]))
        compared += 1
    assert compared == 2


def test_small_images_are_padded_with_ignore():
    batches = TrainBatches(samples(count=2, size=20), 2, (32, 32), seed=0)
    _, masks = next(batches.epoch(0))
    assert masks.shape == (2, 32, 32) and (masks[:, 20:] == IGNORE_INDEX).all()


def test_prefetch_yields_the_same_batches_and_passes_errors_on():
    batches = TrainBatches(samples(), 2, (32, 32), seed=4)
    direct = [x for x, _ in batches.epoch(0)]
    fetched = [x for x, _ in prefetch(batches.epoch(0), pin=False)]
    assert len(direct) == len(fetched) == 4 and all(torch.equal(a, b) for a, b in zip(direct, fetched))

    def broken():
        yield torch.zeros(1), torch.zeros(1)
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        list(prefetch(broken(), pin=False))
