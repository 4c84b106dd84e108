"""Rasterise an annotation source once into plain folder datasets inside the cache folder.

``<cache>/annotations-<key>/<split>/`` holds ``imgs/`` (links to the original images, or copies where links are
not possible, or the embedded images), ``masks/`` (PNG class indices, 255 = ignore) and ``classes.yaml``, plus
``source.json`` (the format, problems, warnings and object counts). The key hashes the annotation files' and the
images' paths, sizes and mtimes, so an edit to any of them builds again; the folder is written under a temporary
name and renamed into place, so a crash never leaves a half-built dataset that a later run would trust.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from unetseg.core.atomic import write_atomic
from unetseg.data.formats.source import IGNORE, Item, Source, file_stats
from unetseg.data.index import cache_lock, digest
from unetseg.errors import UserError

BUILD_VERSION = 1
KEEP = 3  # generated datasets kept per source (older ones are deleted)


@dataclass
class Generated:
    """The folder datasets made from an annotation source, and what its reader found."""

    format: str
    origin: Path
    folders: dict[str, Path]  # split -> folder holding imgs/, masks/, classes.yaml
    problems: list[str]
    warnings: list[str]
    notes: list[str]
    objects: dict[str, int] | None


def generate(source: Source, home: Path) -> Generated:
    """The generated folders of ``source`` under ``home``, built first when missing or out of date."""
    images = [i.image for i in source.items if isinstance(i.image, Path)]
    key = digest(json.dumps([BUILD_VERSION, source.format, file_stats(source.files), file_stats(images)]), 12)
    folder = home / f"annotations-{key}"
    with cache_lock(home, "annotations"):
        if not (folder / "source.json").is_file():
            _build(source, folder)
            _prune(home, folder)
    try:
        info = json.loads((folder / "source.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{folder}/source.json cannot be read ({err}); delete {folder} and run again") from None
    return Generated(
        info["format"],
        source.origin,
        {s: folder / s for s in info["splits"]},
        info["problems"],
        info["warnings"],
        info["notes"],
        info["objects"],
    )


def _build(source: Source, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a build that crashed (builders hold the lock)
    try:
        splits = source.splits() or ["train"]
        for split in splits:
            (tmp / split / "imgs").mkdir(parents=True)
            (tmp / split / "masks").mkdir()
            write_atomic(tmp / split / "classes.yaml", classes_yaml(source).encode())
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = [p for p in pool.map(lambda item: _write_item(item, tmp / item.split), source.items) if p]
        info = {
            "format": source.format,
            "splits": splits,
            "problems": source.problems + problems,
            "warnings": source.warnings,
            "notes": source.notes,
            "objects": source.objects,
        }
        write_atomic(tmp / "source.json", json.dumps(info).encode())
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"cannot write the masks made from {source.origin} into {folder} ({err}); free some space or pass "
            "--cache-dir DIR on a writable disk"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def classes_yaml(source: Source) -> str:
    """The classes file of the generated folders: index i is class i, 255 is ignored."""
    entries = []
    for index, name in enumerate(source.names):
        entry: dict = {"name": name, "value": index}
        color = source.colors[index] if index < len(source.colors) else None
        if color is not None:
            entry["color"] = list(color)
        entries.append(entry)
    data: dict = {"classes": entries, "ignore": IGNORE}
    if source.score:
        data["score"] = source.score
    header = f"# made by unetseg from {source.origin} ({source.format}); index = class, {IGNORE} = ignored\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _write_item(item: Item, split_dir: Path) -> str | None:
    """The image (a link, or a copy) and the rasterised mask of one item; a problem when it cannot be drawn."""
    try:
        mask = item.draw()
    except (ValueError, OSError) as err:
        return f"{item.where or item.stem}: cannot draw the mask ({err}); fix or remove this annotation"
    if mask is None:
        return None  # the reader reported why
    target = split_dir / "imgs" / f"{item.stem}{item.suffix}"
    if isinstance(item.image, bytes):
        target.write_bytes(item.image)
    else:
        _link_or_copy(item.image, target)
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(split_dir / "masks" / f"{item.stem}.png")
    return None


def _link_or_copy(image: Path, target: Path) -> None:
    try:
        os.symlink(image.resolve(), target)
    except OSError:  # no symbolic links here (some Windows setups, some filesystems)
        shutil.copyfile(image, target)


def _prune(home: Path, current: Path) -> None:
    """Keep the ``KEEP`` newest generated datasets of this source."""
    folders = [p for p in home.glob("annotations-*") if p.is_dir() and p != current and (p / "source.json").is_file()]
    folders.sort(key=lambda p: (p / "source.json").stat().st_mtime, reverse=True)
    for old in folders[KEEP - 1 :]:
        shutil.rmtree(old, ignore_errors=True)
