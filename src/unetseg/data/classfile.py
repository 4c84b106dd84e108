"""``classes.yaml``: names each class with its mask value or colour, and optionally a mask value to ignore.

Two spellings are accepted::

    classes:                # a mapping name -> value (or colour)
      background: 0
      car: 255
    ignore: 128             # optional: pixels with this value are skipped by losses and metrics
    score: all              # optional: rank models by mIoU over all classes (all) or foreground Dice (foreground)

    classes:                # a list, when a class needs a display colour besides its value
      - {name: background, value: 0}
      - {name: road, color: [128, 64, 128]}       # colour masks: the colour is the mask value
      - {name: car, value: 2, color: "#ff0000"}   # index masks: value in the mask, colour for overlays
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError

CLASSES_FILE_NAMES = ("classes.yaml", "classes.yml")


def find_classes_file(folders: list[Path], explicit: str | Path | None) -> Path | None:
    """``--classes-file`` when given (it must exist), else a classes.yaml in one of ``folders``."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"--classes-file {path}: file does not exist; check the path")
        return path
    for folder in folders:
        for name in CLASSES_FILE_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def load_classes_file(path: Path) -> ClassMap:
    """The class map a classes file describes; every mistake names the file and shows the expected form."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read this classes file ({err}); fix it or remove it") from None
    if not isinstance(data, dict) or "classes" not in data:
        raise _bad(path, "expected a mapping with a 'classes' entry")
    entries = data["classes"]
    if isinstance(entries, dict):
        entries = [{"name": str(k), "color" if isinstance(v, (list, str)) else "value": v} for k, v in entries.items()]
    if not isinstance(entries, list) or len(entries) < 2:
        raise _bad(path, "'classes' must name at least two classes (the background too)")
    names, values, colors = [], [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or not ({"value", "color", "colour"} & set(entry)):
            raise _bad(path, f"class {i + 1} needs a name and a value or a color")
        names.append(str(entry["name"]))
        color = entry.get("color", entry.get("colour"))
        values.append(_value(path, entry["value"]) if "value" in entry else _color(path, color))
        colors.append(_color(path, color) if color is not None else None)
    kinds = {isinstance(v, list) for v in values}
    if len(kinds) > 1:
        raise _bad(path, "give every class a value (index or grey masks) or every class a colour (RGB masks), not both")
    for what, items in (("name", names), ("value", [str(v) for v in values])):
        repeated = sorted({x for x in items if items.count(x) > 1})
        if repeated:
            raise _bad(path, f"{what} {', '.join(repeated)} appears more than once")
    ignore = data.get("ignore")
    if ignore is not None:
        ignore = _color(path, ignore) if isinstance(values[0], list) else _value(path, ignore)
    score = data.get("score")
    if score is not None and score not in ("auto", "foreground", "all"):
        raise _bad(path, f"score {score!r} is not auto, foreground (classes 1..K-1) or all (every class, mIoU)")
    class_map = ClassMap(values=values, names=names, ignore=ignore, score=None if score == "auto" else score)
    class_map.colors = [c or d for c, d in zip(colors, class_map.colors)]
    return class_map


def _bad(path: Path, what: str) -> UserError:
    return UserError(
        f"{path}: {what}; write e.g.\n    classes:\n      background: 0\n      car: 255\n    ignore: 128  # optional"
    )


def _value(path: Path, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(path, f"class value {value!r} is not a non-negative integer")
    return value


def _color(path: Path, value: object) -> list[int]:
    if isinstance(value, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        return [int(value[i : i + 2], 16) for i in (1, 3, 5)]
    if isinstance(value, list) and len(value) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in value):
        return list(value)
    raise _bad(path, f"colour {value!r} is not [r, g, b] (0-255 each) or '#rrggbb'")
