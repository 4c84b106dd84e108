"""Where predict writes, and how: one output-name guard and one atomic write path for every file it writes.

Every planned file (masks, overlays, probabilities, ``predictions.csv``) is named up front and checked at once:
names stay inside the output folder, no two planned files share a name, no input is ever written over, and an
existing file is replaced only when predict wrote it (it is listed, with its size and hash, in the folder's
``.unetseg-predict.json``) or ``--overwrite`` is given. Files are encoded in memory and written through
:func:`unetseg.core.atomic.write_atomic`, so a full disk leaves no partial file under a final name.
Nothing here may import torch (the ONNX path uses it).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from unetseg.config import PredictConfig
from unetseg.core.atomic import storage_error, write_atomic
from unetseg.data.io import IMAGE_SUFFIXES
from unetseg.errors import UserError

MANIFEST = ".unetseg-predict.json"  # in each output folder: the files predict wrote there
MANIFEST_FORMAT = "unetseg-predict"
DEFAULT_OUTPUT = "predictions"  # without -o: a folder of its own, never beside (or among) the inputs
PALETTE_SUFFIXES = {".png", ".gif", ".bmp", ".tif", ".tiff"}  # Pillow writes mode "P" images to these


@dataclass
class Planned:
    """The files of one input; None where that file is not written."""

    mask: Path | None
    overlay: Path | None
    probs: Path | None
    name: Path  # the mask's name, also when --no-save writes no mask (predictions.csv lists it empty)


@dataclass
class Plan:
    """Every file a predict run writes, checked, and the record of what it wrote."""

    items: list[Planned]
    table: Path
    ledger: Ledger = field(default_factory=lambda: Ledger())


class Ledger:
    """The ``.unetseg-predict.json`` of each output folder: name -> size and hash of each file predict wrote."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # writer threads record concurrently
        self._folders: dict[Path, dict[str, dict]] = {}
        self._dirty: set[Path] = set()

    def entries(self, folder: Path) -> dict[str, dict]:
        with self._lock:
            if folder not in self._folders:
                self._folders[folder] = read_manifest(folder)
            return self._folders[folder]

    def record(self, path: Path, data: bytes) -> None:
        entry = {"size": len(data), "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest()}
        files = self.entries(path.parent)
        with self._lock:
            files[path.name] = entry
            self._dirty.add(path.parent)

    def wrote(self, path: Path) -> bool:
        """True when ``path`` holds exactly what predict last wrote there (not edited or replaced since)."""
        entry = self.entries(path.parent).get(path.name)
        if entry is None or path.stat().st_size != entry["size"]:
            return False
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest() == entry["blake2b"]

    def save(self) -> None:
        """Write each changed manifest (atomically, like every file predict writes)."""
        for folder in sorted(self._dirty):
            body = {"format": MANIFEST_FORMAT, "version": 1, "files": dict(sorted(self._folders[folder].items()))}
            save_bytes(folder / MANIFEST, json.dumps(body, indent=1).encode())
        self._dirty.clear()


def read_manifest(folder: Path) -> dict[str, dict]:
    """The files listed in ``folder``'s manifest; none when it is missing or unreadable (then nothing is trusted)."""
    try:
        body = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    files = body.get("files") if isinstance(body, dict) and body.get("format") == MANIFEST_FORMAT else None
    return dict(files) if isinstance(files, dict) else {}


def is_own_output(path: Path, manifests: dict[Path, dict[str, dict]]) -> bool:
    """True for a file that predict wrote (by name and size in its folder's manifest): never read back as input."""
    folder = path.parent
    if folder not in manifests:
        manifests[folder] = read_manifest(folder)
    entry = manifests[folder].get(path.name)
    try:
        return entry is not None and path.stat().st_size == entry.get("size")
    except OSError:
        return False


def write_error(path: Path, err: OSError) -> UserError:
    """An OSError while writing ``path`` as one message that says what to do (storage errors: core.atomic's)."""
    return storage_error(err, path) or UserError(f"cannot write {path} ({err.strerror or err}); choose another -o")


def save_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename); OS errors become one clear UserError."""
    try:
        write_atomic(path, data)
    except OSError as err:
        raise write_error(path, err) from None


def encode_image(path: Path, array: np.ndarray, palette: list[int] | None = None) -> bytes:
    """``array`` as the bytes of a file of ``path``'s type: ``.npy``, or an image Pillow writes.

    ``palette`` (flat RGB) writes a mode "P" image whose pixel values are the array's values.
    """
    suffix = path.suffix.lower()
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, array)
        return buffer.getvalue()
    if array.ndim == 2 and array.dtype != np.uint8:
        array = array.astype(np.uint8 if array.max(initial=0) <= 255 else np.uint16)
    image = Image.fromarray(array)
    if palette is not None and suffix in PALETTE_SUFFIXES and image.mode == "L":
        image = image.convert("P")  # "L" -> "P" keeps the pixel values; the palette gives their colours
        image.putpalette(palette)
    # PNG level 1: masks compress well even so, and it is several times faster than the default
    options = {"compress_level": 1} if suffix == ".png" else {}
    try:
        image.save(buffer, format=Image.registered_extensions()[suffix], **options)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(
            f"{path}: cannot store a {image.mode} image as {suffix} ({err}); use --suffix .png or .tif"
        ) from None
    return buffer.getvalue()


def save_array(path: Path, array: np.ndarray, ledger: Ledger, palette: list[int] | None = None) -> None:
    """Encode, write atomically, and record as written by predict."""
    data = encode_image(path, array, palette)
    save_bytes(path, data)
    ledger.record(path, data)


def sidecar(target: Path, kind: str, suffix: str) -> Path:
    """``<OUT>/<stem>_<kind><suffix>`` beside a mask."""
    return target.with_name(f"{target.stem}_{kind}{suffix}")


def mask_colours(class_map: object, fmt: str) -> list[int] | None:
    """The training masks' palette when masks go out in their own values and those were palette indices."""
    palette = getattr(class_map, "palette", None)
    if fmt != "value" or not palette or class_map.is_color or max(class_map.values) > 255:
        return None
    return palette


def _file_name(path: Path, option: str) -> Path:
    if path.suffix.lower() not in PredictConfig.SUFFIXES:
        raise UserError(
            f"{option} {path}: masks are written as {', '.join(PredictConfig.SUFFIXES)}; "
            "name the file with one of these types"
        )
    return path


def mask_names(inputs: list[Path], output: list[str] | None, suffix: str) -> list[Path]:
    """Each input's mask: ``<OUT>/<stem><suffix>`` (OUT default ``predictions/``), one named file, or one name each."""
    if output and len(output) > 1:
        if len(output) != len(inputs):
            raise UserError(
                f"-o gives {len(output)} file names for {len(inputs)} input images; give one name per input, "
                "in the order of -i, or one output folder"
            )
        return [_file_name(Path(name), "-o") for name in output]
    target = Path(output[0]) if output else Path(DEFAULT_OUTPUT)
    if output and target.suffix.lower() in IMAGE_SUFFIXES and not target.is_dir():
        if len(inputs) != 1:
            raise UserError(
                f"-o {target}: names one file, but -i gives {len(inputs)} images; give an output folder, "
                "or one file name per input"
            )
        return [_file_name(target, "-o")]
    return [target / f"{p.stem}{suffix}" for p in inputs]  # a stem holds no separator: names stay in OUT


def plan_outputs(inputs: list[Path], cfg: PredictConfig, num_classes: int, protected: list[Path] = ()) -> Plan:
    """Every file this run will write, checked before any is written (see the module docstring).

    ``protected`` are further files never to write over (the model file).
    """
    probs_suffix = ".png" if num_classes == 2 else ".npy"  # binary: 16-bit foreground probability
    items = [
        Planned(
            mask=name if cfg.save else None,
            overlay=sidecar(name, "overlay", ".png") if cfg.viz else None,
            probs=sidecar(name, "probs", probs_suffix) if cfg.probs else None,
            name=name,
        )
        for name in mask_names(inputs, cfg.output, cfg.suffix)
    ]
    plan = Plan(items, items[0].name.parent / "predictions.csv")
    roles = [
        (path, f"the {kind} of {source}")
        for source, item in zip(inputs, items)
        for kind, path in (("mask", item.mask), ("overlay", item.overlay), ("probabilities", item.probs))
        if path is not None
    ]
    roles.append((plan.table, "the predictions table"))
    check_collisions(roles)
    check_targets([path for path, _ in roles], [*inputs, *protected], cfg.overwrite, plan.ledger)
    return plan


def check_collisions(roles: list[tuple[Path, str]]) -> None:
    """No two planned files share a name (compared case-insensitively, as some file systems do)."""
    seen: dict[str, str] = {}
    for path, what in roles:
        key = os.path.normcase(os.path.abspath(path)).casefold()
        if key in seen:
            raise UserError(
                f"{seen[key]} and {what} would both be written to {path}; rename one of the inputs, "
                "or predict them into separate -o folders"
            )
        seen[key] = what


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_targets(targets: list[Path], protected: list[Path], overwrite: bool, ledger: Ledger) -> None:
    """Never an input; an existing file only if predict wrote it or ``overwrite``; every folder writable."""
    kept = {_identity(p) for p in protected} - {None}
    kept_names = {os.path.realpath(p) for p in protected}
    clashes = []
    for path in targets:
        if os.path.realpath(path) in kept_names or _identity(path) in kept:
            raise UserError(
                f"{path} is one of the inputs; predict never writes over its inputs: choose another -o "
                f"(without -o, masks go to {DEFAULT_OUTPUT}/)"
            )
        if path.is_dir():
            raise UserError(f"{path}: a folder is in the way of this output file; move it or choose another -o")
        if path.exists() and not overwrite and not ledger.wrote(path):
            clashes.append(path)
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UserError(
            f"{clashes[0]}{more} already exists and was not written by unetseg predict (it lists what it wrote in "
            f"{MANIFEST}); choose another -o, or pass --overwrite to replace it"
        )
    for folder in sorted({p.parent for p in targets}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTDIR):
                raise UserError(f"{folder}: a file is in the way of this output folder; choose another -o") from None
            raise write_error(folder, err) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise write_error(folder, OSError(errno.EROFS if _read_only(folder) else errno.EACCES, ""))


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
