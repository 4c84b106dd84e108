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
import unicodedata
from pathlib import Path

import yaml

from unetseg.data.classmap import ClassMap
from unetseg.data.folder import entry_kind
from unetseg.errors import DataError, UserError

CLASSES_FILE_NAMES = ("classes.yaml", "classes.yml")
MAX_VALUE = 2**31 - 1  # mask values are read as at most 32-bit integers (16-bit PNG/TIFF, int32 .npy)
MAX_NAME = 64  # characters: names label plots, metric columns and overlays
TOP_KEYS = {"classes", "ignore", "score"}
KIND_PROBLEMS = {
    "dir": "is a folder; pass the classes.yaml file inside it",
    "loop": "is a symbolic link that loops back on itself; point it at the classes file",
    "dangling": "is a broken symbolic link; point it at the classes file",
    "unreadable": "cannot be examined (permission denied); fix its permissions",
    "other": "is not a regular file; pass a YAML file",
}


def find_classes_file(folders: list[Path], explicit: str | Path | None) -> Path | None:
    """``--classes-file`` when given (it must be a file), else a classes.yaml in one of ``folders``."""
    if explicit:
        path = Path(explicit)
        kind = entry_kind(path)
        if kind == "missing":
            raise UserError(f"--classes-file {path}: file does not exist; check the path")
        if kind != "file":
            raise UserError(f"--classes-file {path}: {KIND_PROBLEMS[kind]}")
        return path
    for folder in folders:
        for name in CLASSES_FILE_NAMES:
            kind = entry_kind(folder / name)
            if kind == "file":
                return folder / name
            if kind != "missing":
                raise UserError(f"{folder / name}: {KIND_PROBLEMS[kind]}, or remove it")
    return None


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (plain YAML keeps the last, silently)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool, type(None))):
            raise yaml.constructor.ConstructorError(None, None, "a key must be plain text", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _read(path: Path) -> object:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not UTF-8 text (byte {err.start}); save the classes file as UTF-8 or remove it"
        ) from None
    except OSError as err:
        raise UserError(f"{path}: cannot read this classes file ({err}); fix its permissions or remove it") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise UserError(f"{path}: not valid YAML{where} ({problem}); fix it or remove it") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a classes file; fix it or remove it") from None


def load_classes_file(path: Path) -> ClassMap:
    """The class map a classes file describes; every mistake names the file and shows the expected form."""
    data = _read(path)
    if not isinstance(data, dict) or "classes" not in data:
        raise _bad(path, "expected a mapping with a 'classes' entry")
    unknown = sorted(str(k) for k in data if k not in TOP_KEYS)
    if unknown:
        raise _bad(path, f"unknown entry {', '.join(map(repr, unknown))} (known: classes, ignore, score)")
    entries = data["classes"]
    if isinstance(entries, dict):
        entries = [{"name": k, "color" if isinstance(v, (list, str)) else "value": v} for k, v in entries.items()]
    if not isinstance(entries, list) or len(entries) < 2:
        raise _bad(path, "'classes' must name at least two classes (the background too)")
    names, values, colors = [], [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or not ({"value", "color", "colour"} & set(entry)):
            raise _bad(path, f"class {i + 1} needs a name and a value or a color")
        names.append(_name(path, entry["name"], i))
        color = entry.get("color", entry.get("colour"))
        values.append(_value(path, entry["value"]) if "value" in entry else _color(path, color))
        colors.append(_color(path, color) if color is not None else None)
    _check_unique(path, names, values, colors)
    ignore = data.get("ignore")
    if ignore is not None:
        ignore = _color(path, ignore) if isinstance(values[0], list) else _value(path, ignore, "ignore value")
        if ignore in values:
            clash = names[values.index(ignore)]
            raise _bad(path, f"ignore {ignore} is also the value of class '{clash}'; give ignore a value no class uses")
    score = data.get("score")
    if score is not None and score not in ("auto", "foreground", "all"):
        raise _bad(path, f"score {score!r} is not auto, foreground (classes 1..K-1) or all (every class, mIoU)")
    try:
        class_map = ClassMap(values=values, names=names, ignore=ignore, score=None if score == "auto" else score)
    except DataError as err:
        raise UserError(f"{path}: {err.problems[0]}; name fewer classes") from None
    class_map.colors = [c or d for c, d in zip(colors, class_map.colors)]
    return class_map


def _check_unique(path: Path, names: list[str], values: list, colors: list) -> None:
    """Every class has one kind of value, and names, values and display colours differ."""
    if len({isinstance(v, list) for v in values}) > 1:
        raise _bad(path, "give every class a value (index or grey masks) or every class a colour (RGB masks), not both")
    for what, items in (("name", names), ("value", values), ("colour", colors)):
        for item in items:
            sharing = [repr(n) for n, x in zip(names, items) if x == item]
            if item is not None and len(sharing) > 1:
                raise _bad(path, f"{what} {item} is given to classes {', '.join(sharing)}; give each class its own")


def _bad(path: Path, what: str) -> UserError:
    return UserError(
        f"{path}: {what}; write e.g.\n    classes:\n      background: 0\n      car: 255\n    ignore: 128  # optional"
    )


def _name(path: Path, name: object, index: int) -> str:
    """A class name: text of printable characters (it labels plots, CSV columns and overlays)."""
    if not isinstance(name, str):
        raise _bad(path, f"class {index + 1} has the name {name!r}, which is not text; quote it (e.g. '{name}')")
    if not name.strip() or len(name) > MAX_NAME:
        raise _bad(path, f"class {index + 1} has the name {name[:MAX_NAME]!r}; give it 1 to {MAX_NAME} characters")
    if any(unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") for c in name):
        raise _bad(
            path, f"class name {name!r} holds a line break or control character; write it on one line, printable"
        )
    return name


def _value(path: Path, value: object, what: str = "class value") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise _bad(path, f"{what} {shown} is not an integer from 0 to {MAX_VALUE}")
    return value


def _color(path: Path, value: object) -> list[int]:
    if isinstance(value, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        return [int(value[i : i + 2], 16) for i in (1, 3, 5)]
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return list(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise _bad(path, f"colour {shown} is not [r, g, b] (0-255 each) or '#rrggbb'")
