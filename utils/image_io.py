"""Reading and writing the benchmark images: LDR exposures (TIFF/PNG), Radiance HDR labels and
half-float OpenEXR results.

All functions speak RGB; OpenCV's BGR order stays inside this module. LDR values are
normalised the way the released checkpoints expect: 16-bit values divided by 2**16
(not 65535), 8-bit values by 255, clipped to [0, 1].
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image

from utils.atomic_io import atomic_path

PathType = Union[str, PathLike]

_LDR_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): float(2**16)}
RELEASED_8BIT_SCALE = float(2**16)
"""What the released reader divides every LDR file by, 8-bit ones included."""


class ImageReadError(OSError):
    """An image file is missing, cannot be decoded, or has an unexpected format."""


class ImageWriteError(OSError):
    """OpenCV refused to write an image file."""


JPEG_MAGIC = b"\xff\xd8\xff"


def _read_jpeg(path: Path) -> np.ndarray:
    """A JPEG in OpenCV's layout (BGR or gray, stored pixel order), decoded by Pillow, which
    refuses a truncated file where OpenCV returns its upper part with a warning. Both use
    libjpeg-turbo with the same settings: the pixels are the same."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            pixels = np.asarray(image)
    except OSError as err:
        why = "the file is truncated" if "truncated" in str(err) else str(err)
        raise ImageReadError(f"cannot decode image file: {path} ({why})") from None
    return pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[..., ::-1])


TIFF_MAGICS = (b"II*\x00", b"MM\x00*")


def _tiff_orientation(path: Path) -> int:
    """The Orientation tag of a TIFF's first page (1 when absent)."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(0x0112, 1)  # Orientation
    except (OSError, SyntaxError, ValueError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _read_oriented_tiff(path: Path) -> np.ndarray:
    """A TIFF with an Orientation tag, in its stored pixel order and OpenCV's layout (BGR or
    gray): OpenCV's reader turns some orientations itself and cannot decode the others."""
    import imageio.v3 as iio

    try:
        pixels = iio.imread(path, plugin="tifffile")
    except Exception as err:  # tifffile raises many kinds for broken files
        raise ImageReadError(f"cannot decode image file: {path} ({type(err).__name__}: {err})") from None
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        pixels = np.ascontiguousarray(pixels[..., 2::-1] if pixels.shape[2] == 3 else pixels[..., [2, 1, 0, 3]])
    return pixels


def _to_8bit_colour(image: np.ndarray) -> np.ndarray:
    """What ``cv2.IMREAD_COLOR`` gives: 3-channel BGR, 16-bit values divided by 256."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image[..., :3] if image.shape[2] == 4 else image


def _imread(path: PathType, flags: int) -> np.ndarray:
    """cv2.imread that raises instead of silently returning None; JPEGs go through Pillow (see
    ``_read_jpeg``), so a truncated one is an error too, and TIFFs with an orientation tag through
    tifffile (``_read_oriented_tiff``); the file's first bytes choose."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    with path.open("rb") as handle:
        magic = handle.read(4)
    image = None
    if magic.startswith(JPEG_MAGIC):
        image = _read_jpeg(path)
    elif magic in TIFF_MAGICS and _tiff_orientation(path) != 1:
        image = _read_oriented_tiff(path)
    if image is not None:
        return _to_8bit_colour(image) if flags == cv2.IMREAD_COLOR else image
    image = cv2.imread(str(path), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageReadError(f"cannot decode image file: {path}")
    return image


def _to_rgb(image: np.ndarray, path: PathType) -> np.ndarray:
    """Convert an OpenCV gray/BGR/BGRA array to 3-channel RGB."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageReadError(f"unsupported image shape {image.shape} in {path}")


def _imwrite(path: PathType, image: np.ndarray) -> None:
    """The image encoded by OpenCV (format from the suffix) and written through a temporary file
    (``utils.atomic_io``): the parent folder is created, a failure (a full disk) raises, and no
    half-written image is ever left at ``path``."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise ImageWriteError(f"cannot encode image file: {path} (unsupported format?)")
    with atomic_path(path) as temporary:  # written by Python, so a full disk raises (OpenCV's writer does not)
        temporary.write_bytes(encoded.tobytes())


def _check_rgb(rgb: np.ndarray, path: PathType) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB array for {path}, got shape {rgb.shape}")


@dataclass(frozen=True)
class LdrFrame:
    """A decoded LDR file: ``rgb`` H×W×3 float32 in [0, 1], and whether the file was grayscale
    (its one channel copied into all three)."""

    rgb: np.ndarray
    grayscale: bool


def read_ldr_frame(path: PathType, eight_bit_scale: float = 255.0) -> LdrFrame:
    """Read an 8- or 16-bit LDR image (TIFF, PNG, JPEG) as float32 RGB in [0, 1], in the stored
    pixel order (EXIF orientation is the caller's business).

    16-bit values are divided by 2**16 as the released checkpoints expect; 8-bit values by
    ``eight_bit_scale`` (255; ``RELEASED_8BIT_SCALE`` reproduces the released reader exactly)."""
    image = _imread(path, cv2.IMREAD_UNCHANGED)
    scale = eight_bit_scale if image.dtype == np.uint8 else _LDR_SCALE.get(image.dtype)
    if scale is None:
        raise ImageReadError(f"expected an 8- or 16-bit LDR image, got {image.dtype} in {path}")
    grayscale = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    rgb = _to_rgb(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image, path)
    return LdrFrame(np.clip(rgb.astype(np.float32) / np.float32(scale), 0.0, 1.0), grayscale)


def read_ldr(path: PathType, eight_bit_scale: float = 255.0) -> np.ndarray:
    """``read_ldr_frame``'s H×W×3 float32 RGB in [0, 1]."""
    return read_ldr_frame(path, eight_bit_scale).rgb


def read_ldr_uint8(path: PathType) -> np.ndarray:
    """Read an LDR image as H×W×3 uint8 RGB, e.g. for SAM (OpenCV divides 16-bit values by 256)."""
    return _to_rgb(_imread(path, cv2.IMREAD_COLOR), path)


def read_hdr(path: PathType) -> np.ndarray:
    """Read a Radiance .hdr file as H×W×3 float32 linear RGB."""
    image = _imread(path, cv2.IMREAD_UNCHANGED)
    if image.dtype != np.float32:
        raise ImageReadError(f"expected a floating-point HDR image, got {image.dtype} in {path}")
    return _to_rgb(image, path)


def write_hdr(path: PathType, rgb: np.ndarray) -> None:
    """Write linear float RGB (H×W×3) as a Radiance .hdr file."""
    _check_rgb(rgb, path)
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2BGR)
    _imwrite(path, bgr)


def write_ldr(path: PathType, rgb: np.ndarray, bit_depth: int = 16) -> None:
    """Write float RGB in [0, 1] as an 8- or 16-bit image (TIFF or PNG), full scale = 2**bits - 1."""
    _check_rgb(rgb, path)
    dtypes = {8: np.uint8, 16: np.uint16}
    if bit_depth not in dtypes:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 2**bit_depth - 1
    quantised = np.rint(np.clip(rgb, 0.0, 1.0) * top).astype(dtypes[bit_depth])
    _imwrite(path, cv2.cvtColor(quantised, cv2.COLOR_RGB2BGR))


def write_png(path: PathType, rgb: np.ndarray) -> None:
    """Write an 8-bit PNG from uint8 RGB or float RGB in [0, 1]."""
    _check_rgb(rgb, path)
    if rgb.dtype != np.uint8:
        rgb = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    _imwrite(path, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))


OPENEXR_REQUIREMENT = "openexr"
"""The pip package ``write_exr`` needs."""


def write_exr(path: PathType, rgb: np.ndarray) -> None:
    """Write linear RGB (H×W×3) as a half-float OpenEXR file (ZIP compression).

    OpenEXR reports a failed write as a RuntimeError; it is raised as the OSError it is (ENOSPC
    for a full disk, else EIO), so callers handle it like any other write failure."""
    import OpenEXR

    _check_rgb(rgb, path)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    try:
        with OpenEXR.File(header, {"RGB": np.ascontiguousarray(rgb, dtype=np.float16)}) as exr:
            exr.write(str(path))
    except RuntimeError as err:
        full = "no space left" in str(err).lower()
        raise OSError(errno.ENOSPC if full else errno.EIO, str(err).splitlines()[0], str(path)) from None
