"""Reading and writing images and masks, chosen by file suffix.

Images come back as ``(H, W, C)`` arrays of uint8 or uint16 (their own bit depth, never rescaled here);
masks as ``(H, W)`` integer arrays, or ``(H, W, 3)`` uint8 for colour masks. A file is read from disk once
(``read_bytes``); its bytes can then be hashed and decoded without a second read.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unetseg.errors import UserError

PILLOW_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
TIFF_SUFFIXES = {".tif", ".tiff"}
NUMPY_SUFFIXES = {".npy"}
IMAGE_SUFFIXES = PILLOW_SUFFIXES | NUMPY_SUFFIXES
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}


def is_image_file(path: Path) -> bool:
    """True for a visible file whose suffix unetseg can read."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def read_bytes(path: str | Path) -> bytes:
    """The whole file; a missing, unreadable or empty file is a ``UserError`` that says what to do."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except PermissionError as err:
        raise UserError(f"{path}: permission denied; make it readable (chmod a+r '{path}') or remove it") from err
    except FileNotFoundError as err:
        raise UserError(f"{path}: file vanished while reading the dataset; check the folder and run again") from err
    except OSError as err:
        raise UserError(f"{path}: cannot read this file ({err}); replace or remove it") from err
    if not data:
        raise UserError(f"{path}: file is empty (0 bytes), probably a failed copy or download; replace or remove it")
    return data


def describe(path: Path, data: bytes) -> str:
    """Format and mode from the file header (no decoding), e.g. "PNG P", "JPEG RGB", "TIFF", "NPY"."""
    suffix = path.suffix.lower()
    if suffix in NUMPY_SUFFIXES:
        return "NPY"
    if suffix in TIFF_SUFFIXES:
        return "TIFF"
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"{image.format} {image.mode}"
    except Exception:  # only a label: reading the file reports the real problem
        return suffix[1:].upper()


def _bomb_error(path: Path, detail: str) -> UserError:
    return UserError(
        f"{path}: image is larger than Pillow's decompression-bomb safety limit ({detail}); "
        "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    )


def _open_pillow(path: Path, data: bytes, draft: bool = False) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if draft and image.format == "JPEG":
            image.draft(None, (image.width // 8, image.height // 8))
        image.load()
    except Image.DecompressionBombError as err:
        raise _bomb_error(path, str(err)) from err
    except UnidentifiedImageError as err:
        raise UserError(
            f"{path}: cannot read this file as an image (its content is not a known image format, whatever its "
            "name says); replace or remove it"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        truncated = "truncated" in str(err).lower()
        what = "the file is truncated, as after an interrupted copy or download" if truncated else f"{err}"
        raise UserError(f"{path}: cannot read this file as an image ({what}); replace or remove it") from err
    return image


def probe_jpeg(path: Path, data: bytes) -> tuple[list[int], int] | None:
    """Size ``[H, W]`` and channels of a JPEG image, checked by decoding its whole stream at 1/8 scale.

    libjpeg's DCT scaling makes that several times faster than a full decode, and a truncated or corrupt file
    fails just the same: enough for a scan, which needs no pixels of a JPEG image. None when the file is not
    a JPEG whatever its name says (read it in full instead).
    """
    image = _open_pillow(path, data, draft=True)
    if image.format != "JPEG":
        return None
    with Image.open(io.BytesIO(data)) as header:
        return [header.height, header.width], 1 if header.mode == "L" else 3  # CMYK is read as RGB


def _read_tiff(path: Path, data: bytes) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            shape = tif.series[0].shape
            pixels = int(np.prod(shape[-2:])) if len(shape) < 3 or shape[-1] > 4 else int(np.prod(shape[-3:-1]))
            if pixels > 2 * Image.MAX_IMAGE_PIXELS:  # the same guard Pillow applies to other formats
                raise _bomb_error(path, f"{pixels} pixels, limit {2 * Image.MAX_IMAGE_PIXELS}")
            array = tif.asarray()
    except UserError:
        raise
    except Exception as err:  # tifffile raises many types for a broken file
        raise UserError(f"{path}: cannot read this TIFF ({err}); replace or remove it") from err
    return _channels_last(array)


def _channels_last(array: np.ndarray) -> np.ndarray:
    """Pages or planar channels first ``(C, H, W)`` -> ``(H, W, C)``."""
    if array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:
        return np.moveaxis(array, 0, -1)
    return array


def _read_numpy(path: Path, data: bytes) -> np.ndarray:
    try:
        return _channels_last(np.load(io.BytesIO(data), allow_pickle=False))
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: cannot read this .npy array ({err}); replace or remove it") from err


def _pillow_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.uint16)
    if image.mode in ("I", "F"):
        return np.asarray(image)
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    if image.mode == "1":
        image = image.convert("L")
    return np.asarray(image)


def read_raw(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Decode a file (or its already-read ``data``) to an array of its own dtype: ``(H, W)`` or ``(H, W, C)``."""
    path = Path(path)
    data = read_bytes(path) if data is None else data
    suffix = path.suffix.lower()
    if suffix in NUMPY_SUFFIXES:
        return _read_numpy(path, data)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path, data)
    return _pillow_to_array(_open_pillow(path, data))


def to_image_dtype(array: np.ndarray, path: Path | str) -> np.ndarray:
    """Bring an image array to uint8 or uint16 without changing its values' meaning."""
    if array.dtype in (np.uint8, np.uint16):
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 65535:
            return array.astype(np.uint8 if high <= 255 else np.uint16)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if low >= 0.0 and high <= 1.0:
            return np.round(array * 65535).astype(np.uint16)
    raise UserError(
        f"{path}: pixel values of type {array.dtype} in [{array.min()}, {array.max()}] are not supported; "
        "save the image as 8- or 16-bit unsigned integers, or as floats in [0, 1]"
    )


def read_image(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """An image as ``(H, W, C)`` uint8 or uint16; a constant alpha channel is kept (the caller decides)."""
    array = to_image_dtype(read_raw(path, data), path)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise UserError(
            f"{path}: expected a 2-D image, got an array of shape {array.shape}; save one 2-D image per file"
        )
    return array


def read_mask(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """A mask as ``(H, W)`` integers, or ``(H, W, 3)`` uint8 for a colour mask.

    Palette PNGs give their palette indices; grey-in-RGB masks collapse to one channel; an alpha channel is dropped.
    """
    path = Path(path)
    if path.suffix.lower() in PILLOW_SUFFIXES - TIFF_SUFFIXES:
        image = _open_pillow(path, read_bytes(path) if data is None else data)
        if image.mode == "P":
            return np.asarray(image)  # palette indices are the classes
        array = _pillow_to_array(image)
    else:
        array = read_raw(path, data)
    return _mask_array(path, array)


def _mask_array(path: Path, array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.mod(array, 1) == 0):
            raise UserError(f"{path}: mask holds non-integer values; save masks as integer class values")
        array = array.astype(np.int64)
    if array.ndim == 3:
        array = array[:, :, :3]
        if array.shape[2] == 1 or (
            np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
        ):
            array = array[:, :, 0]
    if array.ndim == 3 and array.dtype != np.uint8:
        raise UserError(f"{path}: colour masks must be 8-bit RGB; save it as an 8-bit RGB or a class-index PNG")
    if array.ndim not in (2, 3):
        raise UserError(f"{path}: expected a 2-D mask, got an array of shape {array.shape}")
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
        raise UserError(f"{path}: mask holds negative values; save masks as non-negative class values")
    return array


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write ``(H, W)`` values or ``(H, W, 3)`` colours; 16-bit values go to 16-bit PNG/TIFF, others to .npy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in NUMPY_SUFFIXES:
        np.save(path, mask)
        return
    if mask.ndim == 2 and mask.max(initial=0) > 255:
        Image.fromarray(mask.astype(np.uint16)).save(path)
        return
    Image.fromarray(mask.astype(np.uint8)).save(path)
