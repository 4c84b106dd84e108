"""The dataset options every command shares: where the images and masks are, how they are read, the split.

Re-exported by :mod:`unetseg.config`; every value passes the checks in :mod:`unetseg.options` on construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from unetseg.errors import UserError
from unetseg.options import Checked, option

MAX_CLASSES = 255  # mask values are 8-bit and 255 means "ignore"
SCALE = {"low": 0, "low_open": True, "high": 16}


@dataclass
class SourceConfig(Checked):
    """Where the images and masks are."""

    data: str | None = option(
        None,
        "dataset folder holding imgs/ (or images/) and masks/ (or labels/)",
        group="data",
        shown="the bundled nuclei sample (train, plan, doctor)",
    )
    images: str | None = option(None, "image folder (with --masks), instead of --data", group="data")
    masks: str | None = option(None, "mask folder (with --images), instead of --data", group="data")
    resize_to_mask: bool = option(
        False,
        "resize images whose size differs from their mask's to the mask's size (aspect ratios must agree)",
        group="data",
    )
    cache: bool = option(
        True,
        "keep a scan index and the decoded arrays (memory-mapped) so later starts read no image twice; "
        "--no-cache decodes into memory and writes nothing",
        group="data",
    )
    cache_dir: str | None = option(
        None,
        "folder for the index and decoded cache",
        group="data",
        shown="DIR/.unetseg, or ~/.cache/unetseg when DIR is read-only",
    )

    def check_together(self) -> None:
        coco = bool(self.data and self.images and not self.masks)  # --data annotations.json (or .xml) --images DIR
        if self.data and (self.images or self.masks) and not coco:
            raise UserError("--data and --images/--masks name the same thing: pass --data DIR, or --images and --masks")
        if bool(self.images) != bool(self.masks) and not coco:
            raise UserError("--images and --masks go together: pass both folders, or --data DIR instead")


@dataclass
class DatasetConfig(SourceConfig):
    """How a dataset's images and masks are read into a training or checked set."""

    val_data: str | None = option(
        None, "explicit validation dataset folder instead of a random split", group="data", shown="a random split"
    )
    scale: float = option(
        1.0,
        "downscaling factor of the images (bicubic) and masks (nearest), as Pytorch-UNet",
        "-s",
        group="data",
        **SCALE,
    )
    classes: int | None = option(
        None,
        "number of classes (1 = binary with one sigmoid output)",
        "-c",
        group="data",
        low=1,
        high=MAX_CLASSES,
        shown="the number of mask values found",
    )
    channels: int | None = option(None, "input channels", choices=(1, 3, 4), group="data", shown="from the images")
    classes_file: str | None = option(
        None,
        "YAML file naming each class's mask value or colour, and an optional ignore value",
        group="data",
        shown="classes.yaml in the dataset folder when there is one",
    )


@dataclass
class DataConfig(DatasetConfig):
    """A dataset and its train/validation split."""

    validation: float = option(
        10.0,
        "percent of the data used for validation (deterministic given --seed)",
        "-v",
        group="data",
        low=0,
        high=100,
        high_open=True,
        unit="a percent",
    )
