"""``unetseg doctor``: read a whole dataset once and say what is in it, what is wrong, and how to fix it.

The checks are the ones ``unetseg train`` runs before training (``unetseg.data.checks``), so the two commands
refuse the same datasets with the same messages.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter

from unetseg.config import DoctorConfig
from unetseg.data.checks import Inspection, class_table, inspect_dataset
from unetseg.data.formats import Generated
from unetseg.data.index import FileInfo

SHOWN = 6  # rows per histogram
LARGE_SIDE = 1024  # images with a longer median side are suggested a --scale of 0.5 (Pytorch-UNet's Carvana setting)


def run_doctor(cfg: DoctorConfig) -> int:
    """Print the report; 0 when the dataset can be trained on (warnings allowed), 2 when it cannot."""
    report = inspect_dataset(
        cfg.data,
        cfg.images,
        cfg.masks,
        cfg.val_data,
        cfg.classes,
        cfg.classes_file,
        cfg.resize_to_mask,
        cfg.cache,
        cfg.cache_dir,
        cfg.workers,
    )
    print("\n".join(render(report, cfg)))
    return 2 if report.problems else 0


def render(report: Inspection, cfg: DoctorConfig) -> list[str]:
    """The report as lines of text."""
    lines = []
    for folder in report.folders:
        images = list(folder.images.values())
        lines += [
            f"dataset   {folder.generated.origin if folder.generated else folder.root}",
            f"  files     {folder.listed[0]} images in {folder.image_dir}, {folder.listed[1]} masks in "
            f"{folder.mask_dir}; {len(folder.pairs)} pairs ready, {folder.unreadable} files unreadable",
            f"  sizes     {_histogram(Counter(f'{i.shape[1]}x{i.shape[0]}' for i in images))}",
            f"  channels  {_histogram(Counter(_channels(i) for i in images))}",
            f"  formats   {_histogram(Counter(i.kind for i in images))}",
            f"  masks     {_histogram(Counter(_encoding(m) for m in folder.masks.values()))}",
        ]
        lines += _format(folder.generated) if folder.generated and folder is report.folders[0] else []
        lines += [f"  note      {n}" for n in folder.notes]
    lines += _classes(report)
    lines += [f"problem   {p}" for p in report.problems]
    lines += [f"warning   {w}" for w in report.warnings]
    lines += [f"note      {n}" for n in report.notes if all(n not in f.notes for f in report.folders)]
    if report.problems:
        lines.append(f"verdict   cannot train: fix the {len(report.problems)} problem(s) above, then run doctor again")
    else:
        extra = f" ({len(report.warnings)} warning(s))" if report.warnings else ""
        lines.append(f"verdict   ready to train{extra}")
    lines.append(f"suggested {suggest(report, cfg)}")
    return lines


def _format(generated: Generated) -> list[str]:
    """The annotation format recognised, its splits, and the objects drawn per class."""
    splits = ", ".join(f"{s} in {p}" for s, p in generated.folders.items())
    lines = [f"  format    {generated.format} (from {generated.origin}); masks drawn into {splits}"]
    if generated.objects is not None:
        counts = ", ".join(f"{name} {n}" for name, n in generated.objects.items())
        lines.append(f"  objects   {counts or 'none'}")
    return lines


def _histogram(counts: Counter) -> str:
    rows = [f"{key} ({n})" for key, n in counts.most_common(SHOWN)]
    more = len(counts) - SHOWN
    return ", ".join(rows) + (f", and {more} more" if more > 0 else "") if rows else "none"


def _channels(info: FileInfo) -> str:
    name = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}.get(info.info_channels, f"{info.info_channels}-channel")
    alpha = " + constant alpha" if info.channels > info.info_channels else ""
    return f"{name} {'16' if info.dtype == 'uint16' else '8'}-bit{alpha}"


def _encoding(info: FileInfo) -> str:
    fmt = info.kind.split()[0]
    if info.kind.endswith(" P"):
        what = "palette indices"
    elif info.is_color:
        what = "RGB colours"
    elif info.values and max(info.values) > 255:
        what = "16-bit values"
    else:
        what = "values"
    lossy = " (lossy)" if fmt in ("JPEG", "WEBP") else ""
    return f"{fmt} {what}{lossy}"


def _classes(report: Inspection) -> list[str]:
    class_map = report.class_map
    if class_map is None:
        return []
    pixels, images, _ = class_table(report.scan, class_map)
    total = max(int(pixels.sum()), 1)
    source = f"from {report.classes_file}" if report.classes_file else "discovered from the masks"
    lines = [f"classes   {class_map.num_classes} ({source}); share of mask pixels, images containing the class"]
    rows = list(zip(range(class_map.num_classes), class_map.names, class_map.values))
    if class_map.ignore is not None:
        rows.append(("ignore", "(skipped)", class_map.ignore))
    for (index, name, value), count, seen in zip(rows, pixels, images):
        lines.append(
            f"  {index!s:>6} {name:<16} value {_value(value):<14} {100 * count / total:6.2f}% {seen:>8} images"
        )
    return lines


def _value(value: object) -> str:
    return f"({value[0]}, {value[1]}, {value[2]})" if isinstance(value, (list, tuple)) else str(value)


def suggest(report: Inspection, cfg: DoctorConfig) -> str:
    """A ``unetseg train`` command for this dataset, with the options the checks called for."""
    parts = ["unetseg train"]
    parts += [f"--data {cfg.data}"] if cfg.data else [f"--images {cfg.images} --masks {cfg.masks}"]
    parts += [f"--val-data {cfg.val_data}"] if cfg.val_data else []
    parts += [f"--classes-file {cfg.classes_file}"] if cfg.classes_file else []
    parts += [f"-c {cfg.classes}"] if cfg.classes else []
    # Problems whose fix is an option say "pass <option>": the command carries each such option once.
    advised = dict.fromkeys(m for p in report.problems for m in re.findall(r"pass (-c \d+|--resize-to-mask)", p))
    counts = [o for o in advised if o.startswith("-c")][:1] if not cfg.classes else []  # the first class count
    parts += counts + [o for o in advised if not o.startswith("-c")]
    parts += ["--resize-to-mask"] if cfg.resize_to_mask and "--resize-to-mask" not in advised else []
    parts += [f"--channels {cfg.channels}"] if cfg.channels else []
    sides = [max(i.shape) for f in report.folders for i in f.scan.images]
    if cfg.scale != 1.0:
        parts.append(f"-s {cfg.scale}")
    elif sides and statistics.median(sides) > LARGE_SIDE:
        parts.append("-s 0.5")
    if len({tuple(i.shape) for f in report.folders for i in f.scan.images}) > 1:
        parts.append("--patch-size 256")  # mixed sizes train on random crops
    return " ".join(parts) + ("  # after fixing the problems" if report.problems else "")
