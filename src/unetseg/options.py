"""The one gate every option goes through: type, range and choices, read from the dataclass field's metadata.

The command line, ``--config FILE`` and the Python API (``build`` and direct construction of a config
dataclass) all end in :func:`check_value`, so no source of options can skip a check.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import Any

from unetseg.errors import UserError

BIG = 10**9  # the upper end of counts (steps, epochs, rounds) that have no natural maximum


def option(
    default: Any,
    help: str,
    *flags: str,
    choices: tuple | None = None,
    const: Any = None,
    group: str = "options",
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    unit: str = "a value",
    hint: str = "",
    check: Callable[[str, Any], None] | None = None,
    planned: bool | str = False,
    required: str = "",
    long: str | None = None,
    shown: str = "",
) -> Any:
    """A dataclass field that the CLI turns into ``--name`` (plus ``flags``), with everything its check needs.

    ``low``/``high`` bound a number (inclusive unless ``low_open``/``high_open``); floats must also be finite.
    ``check(name, value)`` raises for what a range cannot say (a duration, a list of weights). ``planned`` marks
    an option the plan chooses (a string says when). ``required`` is the message when it is missing. ``const``
    makes the value optional on the command line: ``--name`` alone means ``const``. ``long`` replaces ``--name``;
    ``shown`` says in the help what a default of None means.
    """
    meta = {
        "help": help,
        "flags": flags,
        "choices": choices,
        "const": const,
        "group": group,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "unit": unit,
        "hint": hint,
        "check": check,
        "planned": planned,
        "required": required,
        "long": long,
        "shown": shown,
    }
    return field(default=default, metadata=meta)


def kind_of(f: dataclasses.Field) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str' | 'list', whether None is allowed) from the field's annotation."""
    parts = [p.strip() for p in str(f.type).split("|")]
    base = parts[0].split("[")[0]
    return base, "None" in parts or f.default is None


def flags_of(f: dataclasses.Field) -> list[str]:
    """The flags of ``f`` as argparse takes them: short flags first, then the long one."""
    long = f.metadata.get("long") or "--" + f.name.replace("_", "-")
    return [*f.metadata.get("flags", ()), long]


def display(f: dataclasses.Field) -> str:
    """The option as the user writes it: ``-l/--learning-rate`` (short flags and the long name; aliases left out)."""
    flags = flags_of(f)
    return "/".join([x for x in flags[:-1] if not x.startswith("--")] + flags[-1:])


WORDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str": "text",
    "list": "a list of text values",
}


def _typed(name: str, kind: str, value: Any) -> Any:
    """``value`` as the field's type, or a UserError; a bool is never taken for a number, nor a number for a bool."""
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
        "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
        "str": isinstance(value, str | int | float) and not isinstance(value, bool),
        "list": isinstance(value, str) or (isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)),
    }.get(kind, True)
    if not ok:
        hint = "; on the command line use --x or --no-x" if kind == "bool" else ""
        raise UserError(f"{name} takes {WORDS[kind]}, not {value!r} ({type(value).__name__}){hint}")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "str":
        return str(value)  # `out: 123` in YAML is the folder named 123
    if kind == "list":
        return [value] if isinstance(value, str) else list(value)
    return value


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def range_text(meta: dict, kind: str) -> str:
    """'from 1 to 512', 'greater than 0 and at most 10', 'at least 0'."""
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None and not (meta["low_open"] or meta["high_open"]):
        return f"from {_num(low)} to {_num(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'greater than' if meta['low_open'] else 'at least'} {_num(low)}")
    if high is not None:
        parts.append(f"{'less than' if meta['high_open'] else 'at most'} {_num(high)}")
    return " and ".join(parts)


def _check_range(name: str, kind: str, value: float, meta: dict) -> None:
    low, high = meta.get("low"), meta.get("high")
    finite = kind != "float" or math.isfinite(value)
    inside = finite and (
        (low is None or (value > low if meta["low_open"] else value >= low))
        and (high is None or (value < high if meta["high_open"] else value <= high))
    )
    if inside:
        return
    unit = meta.get("unit") or "a value"
    what = unit if finite else "a finite " + unit.split(" ", 1)[-1]
    text = " ".join(p for p in (what, range_text(meta, kind)) if p)
    hint = f"; {meta['hint']}" if meta.get("hint") else ""
    raise UserError(f"{name} {_num(value)}: choose {text}{hint}")


def check_value(f: dataclasses.Field, value: Any) -> Any:
    """``value`` checked against field ``f`` (type, range, choices, custom check) and converted to its type."""
    name, meta = display(f), f.metadata
    kind, nullable = kind_of(f)
    if value is None:
        if nullable:
            return None
        raise UserError(f"{name} needs {WORDS.get(kind, 'a value')}; leave it out for the default {f.default!r}")
    value = _typed(name, kind, value)
    choices = meta.get("choices")
    if choices and value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(str, choices))} (got {value!r})")
    if kind in ("int", "float"):
        _check_range(name, kind, value, meta)
    if meta.get("check"):
        meta["check"](name, value)
    return value


def check_fields(config: Any) -> None:
    """Every field of a config dataclass through :func:`check_value` (values converted in place), then required."""
    for f in dataclasses.fields(config):
        object.__setattr__(config, f.name, check_value(f, getattr(config, f.name)))
        if f.metadata.get("required") and not getattr(config, f.name):
            raise UserError(f"{display(f)} is required: {f.metadata['required']}")


class Checked:
    """Base of the config dataclasses: every field is checked on construction, then :meth:`check_together`."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.check_together()

    def check_together(self) -> None:
        """Checks that involve several options (overridden by the configs that have them)."""


TRUE_TEXT = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def from_text(f: dataclasses.Field, value: Any) -> Any:
    """YAML reads 1e-3 as text and users write "8" for 8: text for a number or a boolean, converted."""
    kind, _ = kind_of(f)
    if not isinstance(value, str) or kind not in ("int", "float", "bool"):
        return value
    try:
        if kind == "bool":
            return TRUE_TEXT[value.strip().lower()]
        return int(value) if kind == "int" else float(value)
    except (ValueError, KeyError):
        raise UserError(f"{display(f)} takes {WORDS[kind]}, not {value!r}") from None


def check_names(cls: type, values: dict, skip: Iterable[str] = (), command: str = "") -> None:
    """Unknown option names, and options this command does not use (``skip``, unless left at their default)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = f"unetseg {command}" if command else cls.__name__
    for name, value in values.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            guess = f"; did you mean {', '.join(display(fields[c]) for c in close)}?" if close else ""
            raise UserError(f"unknown option '{name}' for {where}{guess} (see unetseg {command or '<command>'} --help)")
        if name in skip and value != fields[name].default:
            raise UserError(f"{display(fields[name])} means nothing to {where}; leave it out")


def help_text(f: dataclasses.Field) -> str:
    """The field's help and the default that will really be used: a value, 'planned', on/off, or 'required'."""
    meta, text = f.metadata, f.metadata.get("help", "")
    if meta.get("required"):
        return f"{text} (required)"
    kind, _ = kind_of(f)
    if meta.get("shown"):
        shown = meta["shown"]
    elif kind == "bool" and f.default is not None:
        shown = "on" if f.default else "off"
    elif f.default is None or f.default == "":
        shown = "none"
    else:
        shown = str(f.default)
    planned = meta.get("planned")
    if planned is True:
        return f"{text} (default: planned; {shown} with --no-plan)"
    if planned:
        return f"{text} (default: {shown}; planned {planned})"
    return f"{text} (default: {shown})"


def parse_duration(text: str) -> float:
    """'90s', '30m', '1.5h', '1h30m' or plain seconds -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise UserError(f"--time-budget {text}: not a duration; write e.g. 90s, 30m, 2h or 1h30m")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * unit[u] for n, u in parts)


def check_duration(name: str, text: str) -> None:
    """A time budget must parse and be longer than zero (the schedule divides by it)."""
    if parse_duration(text) <= 0:
        raise UserError(f"{name} {text}: the budget must be longer than zero, e.g. 90s, 30m or 2h")


def check_class_weights(name: str, text: str) -> None:
    """none, auto, or comma-separated finite positive numbers (their count is checked against the data later)."""
    if text in ("none", "auto"):
        return
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        weights = []
    if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
        raise UserError(f"{name} {text}: write none, auto, or one finite positive weight per class, e.g. 1,5")


def check_names_list(name: str, text: str) -> None:
    """A comma-separated list of names, such as csv,tensorboard (which names exist is checked where they are used)."""
    if not re.fullmatch(r"[a-z0-9_]+(,[a-z0-9_]+)*", text.replace(" ", "")):
        raise UserError(f"{name} {text!r}: write names separated by commas, e.g. csv,tensorboard")


def check_suffix(name: str, text: str) -> None:
    if not re.fullmatch(r"\.[A-Za-z0-9]+", text):
        raise UserError(f"{name} {text!r}: write a file suffix such as .png or .tif")
