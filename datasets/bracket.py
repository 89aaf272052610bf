"""One exposure bracket of a user's own photos: finding its frames, their exposures, reading them.

A bracket is a folder whose image files are the frames, or a list of image files. Formats:
8- and 16-bit TIFF, PNG and JPEG; 2 to 6 frames of one size. Exposures come from, first found:

1. explicit stops, one per file in sorted-name order (only differences matter);
2. an ``exposure.txt`` in the folder (the benchmarks' file: stops, sorted-name order);
3. the EXIF of each file: relative exposure ``t · ISO / N²`` (ISO and f-number folded in when
   every file records them), stops = log2 of it relative to the shortest.

Frames are ordered shortest exposure first whatever their names; the reference is the middle
one (``n // 2``), as in the benchmarks. Frames are turned upright as their EXIF Orientation tag
says (``upright``, as viewers and ``PIL.ImageOps.exif_transpose`` do); all frames of a bracket
must carry the same one (none counts as 1). Every problem raises ``BracketError`` with a one-line
message naming the file or option.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from utils.cli import UsageError
from utils.image_io import ImageReadError, read_ldr_frame
from utils.safe_paths import broken_link

from .scene import SceneError, SceneLayout, check_colour_agreement, check_stops, read_exposures

PathLike = str | Path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MIN_FRAMES, MAX_FRAMES = 2, 6
MIN_STOP_GAP = 0.01
"""Frames whose exposures differ by less than this many stops count as equal exposures."""

EXPOSURE_FILE = SceneLayout.exposure_file
_NOT_FRAMES = {SceneLayout().masks_preview_file}


class BracketError(UsageError):
    """A bracket that cannot be used: missing or unreadable frames, unknown or equal exposures."""


@dataclass(frozen=True)
class BracketSource:
    """A bracket's frames and exposures, found without decoding the images."""

    name: str
    files: tuple[Path, ...]  # shortest exposure first
    stops: tuple[float, ...]  # one per file, increasing
    exposure_source: str  # "--stops", "exposure.txt" or "EXIF"
    orientation: int = 1  # the frames' EXIF Orientation (1 = stored upright)

    @property
    def reference_index(self) -> int:
        return len(self.files) // 2

    @property
    def from_exposure_file(self) -> bool:
        return self.exposure_source == EXPOSURE_FILE


@dataclass
class Bracket:
    """A decoded bracket: ``ldrs`` n×H×W×3 float32 in [0, 1], shortest exposure first."""

    source: BracketSource
    ldrs: np.ndarray

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def stops(self) -> np.ndarray:
        return np.asarray(self.source.stops, dtype=np.float32)

    @property
    def reference_index(self) -> int:
        return self.source.reference_index


@dataclass(frozen=True)
class ExifExposure:
    """What a frame's EXIF says about its exposure; ISO and f-number may be missing."""

    time: float
    iso: float | None = None
    fnumber: float | None = None


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_frames(folder: PathLike) -> list[Path]:
    """The image files of a bracket folder, sorted by name (the masks preview is not a frame)."""
    folder = Path(folder)
    for path in folder.iterdir():
        why = broken_link(path) if path.suffix.lower() in IMAGE_SUFFIXES else None
        if why:
            raise BracketError(f"{path}: {why}; remove or repair the link")
    return sorted(p for p in folder.iterdir() if is_image_file(p) and p.name not in _NOT_FRAMES)


def _check_count(files: Sequence[Path], where: str) -> None:
    if len(files) == 1:
        raise BracketError(f"{files[0]}: a single frame; a bracket needs {MIN_FRAMES} to {MAX_FRAMES} exposures")
    if not MIN_FRAMES <= len(files) <= MAX_FRAMES:
        raise BracketError(f"{where}: {len(files)} frames; a bracket needs {MIN_FRAMES} to {MAX_FRAMES} exposures "
                           f"({', '.join(IMAGE_SUFFIXES)} files)")


def _first_number(value: object) -> float | None:
    """An EXIF value (rational, number, or a tuple of them) as a positive float, else None."""
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def read_exif_exposure(path: PathLike) -> ExifExposure | None:
    """ExposureTime, ISO and FNumber from a file's EXIF; None when it has no EXIF at all.

    Raises BracketError when the file cannot be opened or its EXIF lacks a usable ExposureTime.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            tags = {**exif, **exif.get_ifd(ExifTags.IFD.Exif)}
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BracketError(f"{path}: cannot read the image or its EXIF ({err})") from None
    if not tags:
        return None
    time = _first_number(tags.get(ExifTags.Base.ExposureTime))
    if time is None:
        raise BracketError(f"{path}: its EXIF has no usable ExposureTime; "
                           f"provide --stops or an {EXPOSURE_FILE} for the bracket")
    return ExifExposure(time, _first_number(tags.get(ExifTags.Base.ISOSpeedRatings)),
                        _first_number(tags.get(ExifTags.Base.FNumber)))


def exif_stops(files: Sequence[Path]) -> list[float] | None:
    """Stops of each file from EXIF, relative to the shortest; None when no file has EXIF.

    Relative exposure is ``t · ISO / N²``; ISO and the f-number are folded in only when every
    frame records them (when all frames share them they do not change the stops anyway).
    """
    readings = [read_exif_exposure(path) for path in files]
    if all(r is None for r in readings):
        return None
    found = [r for r in readings if r is not None]
    if len(found) < len(readings):
        path = files[readings.index(None)]
        raise BracketError(f"{path}: no EXIF exposure time while other frames have one; "
                           f"provide --stops or an {EXPOSURE_FILE} for the bracket")
    exposures = np.array([r.time for r in found], dtype=np.float64)
    isos, fnumbers = [r.iso for r in found], [r.fnumber for r in found]
    if None not in isos:
        exposures *= np.asarray(isos, dtype=np.float64)
    if None not in fnumbers:
        exposures /= np.square(np.asarray(fnumbers, dtype=np.float64))
    return [float(s) for s in np.log2(exposures / exposures.min())]


def _check_stops(values: Sequence[float], where: str) -> None:
    try:
        check_stops(values, where)
    except SceneError as err:
        raise BracketError(str(err)) from None


def _order_by_exposure(files: Sequence[Path], stops: Sequence[float]) -> tuple[tuple[Path, ...], tuple[float, ...]]:
    """Files and stops sorted shortest first; equal exposures are an error naming both files."""
    order = sorted(range(len(files)), key=lambda i: stops[i])
    for a, b in itertools.pairwise(order):
        if stops[b] - stops[a] < MIN_STOP_GAP:
            raise BracketError(f"{files[a]} and {files[b]}: equal exposures ({stops[a]:g} and {stops[b]:g} stops); "
                               f"a bracket needs different exposures")
    return tuple(files[i] for i in order), tuple(float(stops[i]) for i in order)


def find_bracket(inputs: PathLike | Sequence[PathLike], stops: Sequence[float] | None = None,
                 name: str | None = None) -> BracketSource:
    """Frames and exposures of one bracket: a folder, or a list of image files.

    ``stops`` (one per file in sorted-name order) win over the folder's ``exposure.txt``, which
    wins over EXIF. The bracket is named ``name``, else after the folder (a list of files: the
    first file's parent folder).
    """
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    folder: Path | None = None
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        files = list_frames(folder)
        if not files:
            raise BracketError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        where = str(folder)
    else:
        for path in paths:
            if path.is_dir():
                raise BracketError(f"{path}: a folder among image files; give folders or the files of one bracket")
            if not path.is_file():
                raise BracketError(f"{path}: no such file")
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise BracketError(f"{path}: not a supported image file ({', '.join(IMAGE_SUFFIXES)})")
        if len({p.resolve() for p in paths}) < len(paths):
            raise BracketError(f"{paths[0].parent}: a file is given twice")
        files = sorted(paths, key=lambda p: (p.name, str(p)))
        where = str(files[0].parent)
    _check_count(files, where)
    bracket_name = name or (folder or files[0].resolve().parent).resolve().name

    if stops is not None:
        values, source = [float(s) for s in stops], "--stops"
        if len(values) != len(files):
            raise BracketError(f"--stops: {len(values)} values for the {len(files)} frames of {where} "
                               f"({', '.join(p.name for p in files)})")
        _check_stops(values, "--stops")
        values = [v - min(values) for v in values]
    elif folder is not None and (folder / EXPOSURE_FILE).is_file():
        try:
            values, source = [float(v) for v in read_exposures(folder)], EXPOSURE_FILE
        except SceneError as err:
            raise BracketError(str(err)) from None
        if len(values) != len(files):
            raise BracketError(f"{folder / EXPOSURE_FILE}: {len(values)} exposure values for {len(files)} frames "
                               f"({', '.join(p.name for p in files)})")
    else:
        found = exif_stops(files)
        if found is None:
            raise BracketError(f"{where}: no exposure information: provide --stops, an {EXPOSURE_FILE} in the "
                               f"folder, or files with EXIF exposure times")
        values, source = found, "EXIF"
        _check_stops(values, f"{where}: the exposures in the files' EXIF")
    ordered_files, ordered_stops = _order_by_exposure(files, values)
    return BracketSource(bracket_name, ordered_files, ordered_stops, source, bracket_orientation(ordered_files))




_UPRIGHT = {  # EXIF Orientation → the stored pixels turned upright, as PIL.ImageOps.exif_transpose does
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180°
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transposed
    6: lambda a: np.rot90(a, -1),  # turned 90° clockwise
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # transversed
    8: lambda a: np.rot90(a, 1),  # turned 90° counter-clockwise
}


def read_orientation(path: PathLike) -> int:
    """A file's EXIF Orientation, 1 to 8; 1 without one (or with a value outside 1–8, or a
    header Pillow cannot parse, as viewers do)."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def bracket_orientation(files: Sequence[Path]) -> int:
    """The EXIF Orientation all frames share; BracketError naming two frames that disagree."""
    values = [read_orientation(path) for path in files]
    for path, value in zip(files[1:], values[1:]):
        if value != values[0]:
            raise BracketError(f"{files[0]} and {path}: EXIF orientations {values[0]} and {value}; the frames "
                               f"of a bracket must be stored the same way up")
    return values[0]


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """An H×W(×C) frame in stored pixel order turned upright for its EXIF Orientation (contiguous)."""
    turn = _UPRIGHT.get(orientation)
    return image if turn is None else np.ascontiguousarray(turn(image))


def load_bracket(source: BracketSource) -> Bracket:
    """Decode the frames of a found bracket, turned upright, and check they share one size."""
    ldrs, grayscale = [], []
    for path in source.files:
        try:
            frame = read_ldr_frame(path)
        except ImageReadError as err:
            raise BracketError(str(err)) from None
        ldrs.append(upright(frame.rgb, source.orientation))
        grayscale.append(frame.grayscale)
        if ldrs[-1].shape != ldrs[0].shape:
            h0, w0 = ldrs[0].shape[:2]
            h, w = ldrs[-1].shape[:2]
            raise BracketError(f"{path}: {h}×{w} pixels, but {source.files[0].name} is {h0}×{w0}; "
                               f"the frames of a bracket must have one size")
    try:
        check_colour_agreement(source.files, grayscale, f"bracket {source.name}")
    except SceneError as err:
        raise BracketError(str(err)) from None
    return Bracket(source, np.stack(ldrs))


def read_bracket(inputs: PathLike | Sequence[PathLike], stops: Sequence[float] | None = None,
                 name: str | None = None) -> Bracket:
    """``find_bracket`` then ``load_bracket``."""
    return load_bracket(find_bracket(inputs, stops, name))
