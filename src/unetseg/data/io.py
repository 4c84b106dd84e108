"""Reading and writing images and masks, chosen by file suffix.

Images come back as ``(H, W, C)`` arrays of uint8 or uint16 (their own bit depth, never rescaled here);
masks as ``(H, W)`` integer arrays, or ``(H, W, 3)`` uint8 for colour masks.
"""

from __future__ import annotations

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


def _open_pillow(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: cannot read this file as an image ({err}); replace or remove it") from err
    except Image.DecompressionBombError as err:
        raise UserError(
            f"{path}: image is larger than Pillow's safety limit ({err}); "
            "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from err
    return image


def _read_tiff(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        return np.asarray(_pillow_to_array(_open_pillow(path)))
    try:
        array = tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for a broken file
        raise UserError(f"{path}: cannot read this TIFF ({err}); replace or remove it") from err
    if array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:
        array = np.moveaxis(array, 0, -1)  # pages or planar channels first -> (H, W, C)
    return array


def _read_numpy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
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


def read_raw(path: str | Path) -> np.ndarray:
    """Decode a file to an array of its own dtype: ``(H, W)`` or ``(H, W, C)``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in NUMPY_SUFFIXES:
        return _read_numpy(path)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path)
    return _pillow_to_array(_open_pillow(path))


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


def read_image(path: str | Path) -> np.ndarray:
    """An image as ``(H, W, C)`` uint8 or uint16; a constant alpha channel is kept (the caller decides)."""
    array = to_image_dtype(read_raw(path), path)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise UserError(
            f"{path}: expected a 2-D image, got an array of shape {array.shape}; save one 2-D image per file"
        )
    return array


def read_mask(path: str | Path) -> np.ndarray:
    """A mask as ``(H, W)`` integers, or ``(H, W, 3)`` uint8 for a colour mask.

    Palette PNGs give their palette indices; grey-in-RGB masks collapse to one channel; an alpha channel is dropped.
    """
    path = Path(path)
    if path.suffix.lower() in PILLOW_SUFFIXES - TIFF_SUFFIXES:
        image = _open_pillow(path)
        if image.mode == "P":
            return np.asarray(image)  # palette indices are the classes
        array = _pillow_to_array(image)
    else:
        array = read_raw(path)
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
