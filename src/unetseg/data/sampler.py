"""Training batches: random order and crops reproducible from (seed, epoch), sharded across processes.

Every process draws the same global plan and takes its own slice of each global batch, so N processes with
batch b see exactly the samples that one process with batch N x b sees.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.data.samples import Sample


class TrainBatches:
    """Fixed-size patches in random order; the last partial global batch is dropped.

    Images larger than the patch are cropped at a random place (a ``foreground_share`` of crops is centred on a
    random foreground pixel, so rare classes are seen); smaller ones are padded (image 0, mask ignore).
    ``batch_size`` is per process; a dataset smaller than one batch gives one smaller batch. With ``repeats`` (one
    factor per sample, see repeat_factors) an epoch draws as many images as there are, each as often as its factor
    says relative to the others; without, every image once.
    """

    def __init__(
        self,
        samples: list[Sample],
        batch_size: int,
        patch: tuple[int, int],
        seed: int,
        rank: int = 0,
        world: int = 1,
        foreground_share: float = 0.0,
        repeats: np.ndarray | None = None,
    ) -> None:
        self.samples, self.patch, self.seed, self.rank, self.world = samples, patch, seed, rank, world
        self.batch_size = max(1, min(batch_size, len(samples) // world))
        self.foreground_share = foreground_share
        self.draw = None if repeats is None or len(set(repeats.tolist())) <= 1 else repeats / repeats.sum()
        self._foreground: dict[int, list[np.ndarray]] = {}  # subsampled pixel positions per foreground class

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def __len__(self) -> int:
        return len(self.samples) // self.global_batch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's batches of ``epoch`` from batch ``start`` on: (uint (B, H, W, C), uint8 (B, H, W))."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.samples)
        order = rng.permutation(n) if self.draw is None else rng.choice(n, size=n, p=self.draw)
        corners = rng.random((len(order), 2))
        centred = rng.random(len(order)) < self.foreground_share
        picks = rng.random(len(order))
        for b in range(start, len(self)):
            first = b * self.global_batch + self.rank * self.batch_size
            crops = []
            for i in range(first, first + self.batch_size):
                corner = self._foreground_corner(order[i], picks[i]) if centred[i] else None
                crops.append(self._crop(self.samples[order[i]], corners[i] if corner is None else corner))
            yield torch.from_numpy(np.stack([c[0] for c in crops])), torch.from_numpy(np.stack([c[1] for c in crops]))

    def _foreground_corner(self, index: int, pick: float) -> np.ndarray | None:
        """Corner (as shares of the free range) of a crop centred on a foreground pixel, if any.

        The class is drawn first, evenly among the foreground classes in the image, then a pixel of it: a class
        with 1% of the pixels is centred as often as one with 50%, so rare classes are seen (nnU-Net samples its
        foreground crops by class, too). ``pick`` in [0, 1) chooses both.
        """
        sample = self.samples[index]
        if index not in self._foreground:
            mask = np.asarray(sample.mask)
            by_class = []
            for k in np.unique(mask):
                if k == 0 or k == IGNORE_INDEX:
                    continue
                points = np.argwhere(mask == k)
                step = max(1, len(points) // 2048)  # a subsample is enough to centre crops on objects
                by_class.append(points[::step])
            self._foreground[index] = by_class
        by_class = self._foreground[index]
        if not by_class:
            return None
        which = pick * len(by_class)
        points = by_class[int(which)]
        y, x = points[int((which - int(which)) * len(points))]
        (h, w), (ph, pw) = sample.image.shape[:2], self.patch
        return np.array([(y - ph // 2) / max(h - ph, 1), (x - pw // 2) / max(w - pw, 1)]).clip(0, 1)

    def _crop(self, sample: Sample, corner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ph, pw = self.patch
        h, w = sample.image.shape[:2]
        top = min(int(corner[0] * max(h - ph + 1, 1)), max(h - ph, 0))
        left = min(int(corner[1] * max(w - pw + 1, 1)), max(w - pw, 0))
        image = sample.image[top : top + ph, left : left + pw]
        mask = sample.mask[top : top + ph, left : left + pw]
        if image.shape[:2] != (ph, pw):
            pad_image = np.zeros((ph, pw, image.shape[2]), dtype=image.dtype)
            pad_mask = np.full((ph, pw), IGNORE_INDEX, dtype=np.uint8)
            pad_image[: image.shape[0], : image.shape[1]] = image
            pad_mask[: mask.shape[0], : mask.shape[1]] = mask
            image, mask = pad_image, pad_mask
        return image, mask


def prefetch(batches: Iterator[tuple[torch.Tensor, ...]], pin: bool, depth: int = 3) -> Iterator[tuple]:
    """Make batches in a background thread, pinned for non-blocking copies, so the device never waits for them.

    Cropping and stacking happen in NumPy/torch calls that release the GIL, so the thread overlaps the step.
    """
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for batch in batches:
                batch = tuple(t.pin_memory() for t in batch) if pin else batch
                while not stop.is_set():
                    try:
                        items.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as err:  # handed to the consumer, raised there
            items.put(err)

    thread = threading.Thread(target=work, name="unetseg-prefetch", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
