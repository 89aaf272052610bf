"""One scene of a Kalantari / Prabhakar / Tel style dataset: finding, reading and validating it.

Layout (all file names are options, see `SceneLayout`)::

    <dataset_dir>/<split>/<scene>/[<ldr_subdir>/]*.tif   LDR exposures, sorted name = shortest first
    <dataset_dir>/<split>/<scene>/exposure.txt           one exposure value (stops) per LDR
    <dataset_dir>/<split>/<scene>/HDRImg.hdr             label, aligned to the middle exposure
    <dataset_dir>/<split>/<scene>/masks.npy              H×W×1 float32 segment IDs

`load_scene` reads and validates everything before returning, so a `Scene` is never half-loaded.
"""
from __future__ import annotations

import codecs
import fnmatch
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar, Union

import numpy as np

from utils.atomic_io import save_npy_atomically
from utils.cli import UsageError
from utils.safe_paths import broken_link
from utils.image_io import RELEASED_8BIT_SCALE, ImageReadError, read_hdr, read_ldr_frame

PathLike = Union[str, Path]
T = TypeVar("T")

MAX_SEGMENT_ID = 2**24 - 1
"""Largest segment ID a masks file may hold: IDs are stored as float32, exact up to 2**24, and
the per-segment tables of training are sized by the largest ID in use."""
LABEL_CEILING = 1e6
"""Labels are relative radiance (Kalantari's lie in about [0, 1]); a value above this is a broken file."""
MAX_ABS_STOP = 32.0
"""Largest exposure value (in stops, either sign) a scene or bracket may give: 2**32 between two
frames is beyond any camera, and much larger values overflow the network input (2**stop in float32)."""
LOG = logging.getLogger("smhdr.data")


class SceneError(UsageError):
    """A dataset split or scene is missing files or holds inconsistent data."""


@dataclass(frozen=True)
class SceneLayout:
    """File names inside a scene folder; the defaults match the public benchmarks."""

    ldr_pattern: str = "*.tif"
    ldr_subdir: Optional[str] = None
    exposure_file: str = "exposure.txt"
    label_file: str = "HDRImg.hdr"
    masks_file: str = "masks.npy"
    released_8bit_scaling: bool = False
    """Divide 8-bit LDR files by 2**16 as the released reader does (default: by 255)."""

    @property
    def masks_preview_file(self) -> str:
        """The viewable preview written next to the masks (never taken for an LDR)."""
        return str(Path(self.masks_file).with_suffix(".png"))

    def ldr_folder(self, scene_dir: Path) -> Path:
        """The folder of a scene that holds its LDR files."""
        return scene_dir / self.ldr_subdir if self.ldr_subdir else scene_dir

    def check(self) -> None:
        """Refuse file names that would make one file play two parts (a label taken for an LDR,
        masks written over the label): raises SceneError naming the options."""
        roles = {"--label_file": self.label_file, "--exposure_file": self.exposure_file,
                 "--masks_file": self.masks_file}
        for option, name in roles.items():
            if not name or name in (".", ".."):
                raise SceneError(f"{option} {name!r}: not a file name")
        seen: dict[str, str] = {}
        for option, name in roles.items():
            if name in seen:
                raise SceneError(f"{option} {name} and {seen[name]} {name} name the same file; give each its own name")
            seen[name] = option
        if self.masks_preview_file in (self.label_file, self.exposure_file):
            raise SceneError(f"--masks_file {self.masks_file}: its preview {self.masks_preview_file} would be "
                             "written over the scene's label or exposure file; choose another name")
        if self.ldr_subdir:
            return
        for option, name in roles.items():
            if fnmatch.fnmatchcase(name, self.ldr_pattern):
                raise SceneError(f"{option} {name} matches --ldr_pattern {self.ldr_pattern!r}: it would be taken "
                                 f"for one of the LDR exposures; give {option} another name or narrow --ldr_pattern")


@dataclass
class Scene:
    """A decoded scene. `ldrs` is n×H×W×3 float32 in [0, 1], sorted shortest exposure first."""

    name: str
    path: Path
    ldrs: np.ndarray
    exposures: np.ndarray
    label: Optional[np.ndarray] = None
    segments: Optional[np.ndarray] = None

    @property
    def num_exposures(self) -> int:
        return int(self.ldrs.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.ldrs.shape[1]), int(self.ldrs.shape[2])

    @property
    def reference_index(self) -> int:
        """The exposure the label is aligned to (the middle one)."""
        return self.num_exposures // 2


def _refuse_unresolvable_link(path: Path, what: str) -> None:
    """A symbolic link that leads nowhere (dangling, or a loop) is named, never skipped silently."""
    why = broken_link(path)
    if why:
        raise SceneError(f"{what} {path}: {why}; remove or repair the link")


def list_scenes(dataset_dir: PathLike, split: str) -> list[Path]:
    """Sorted scene folders of `<dataset_dir>/<split>`; hidden folders are skipped."""
    split_dir = Path(dataset_dir) / split
    if not split_dir.is_dir():
        where = f"--dataset_dir {dataset_dir}" if Path(dataset_dir).is_dir() else f"--dataset_dir {dataset_dir} (no such folder)"
        raise SceneError(f"split folder not found: {split_dir} ({where}; the split is {split!r})")
    entries = sorted(p for p in split_dir.iterdir() if not p.name.startswith("."))
    for entry in entries:
        _refuse_unresolvable_link(entry, "scene entry")
    scenes = [p for p in entries if p.is_dir()]
    if not scenes:
        raise SceneError(f"split folder holds no scene folders: {split_dir}")
    return scenes


def find_ldr_files(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> list[Path]:
    """The scene's LDR files sorted by name (= by exposure); the masks preview is excluded."""
    scene_dir = Path(scene_dir)
    ldr_dir = layout.ldr_folder(scene_dir)
    not_ldrs = {layout.masks_preview_file, layout.label_file}
    matches = sorted(p for p in ldr_dir.glob(layout.ldr_pattern) if p.name not in not_ldrs)
    for path in matches:
        _refuse_unresolvable_link(path, f"scene {scene_dir.name}: LDR file")
    files = [p for p in matches if p.is_file()]
    if not files:
        raise SceneError(f"scene {scene_dir.name}: no LDR files matching {layout.ldr_pattern!r} in {ldr_dir}")
    return files


def reference_ldr_file(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> Path:
    """The middle of the sorted LDR files: the exposure the label and the masks belong to."""
    files = find_ldr_files(scene_dir, layout)
    return files[len(files) // 2]


def read_text_file(path: Path) -> str:
    """A small text file as editors on any system write it: UTF-8 with or without a byte-order
    mark, or UTF-16 with one (Windows' "Unicode"); line ends of any kind are left to the caller."""
    raw = path.read_bytes()
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            return raw.decode(encoding)
    return raw.decode("utf-8")


def check_stops(values: Sequence[float], where: str) -> None:
    """Exposure values every command can use: finite, within ±``MAX_ABS_STOP``, not all equal.
    Raises SceneError naming ``where`` (the file or option they came from)."""
    if not values or not all(math.isfinite(v) for v in values):
        raise SceneError(f"{where}: exposure values must be finite numbers, got {list(values)}")
    if max(abs(v) for v in values) > MAX_ABS_STOP:
        raise SceneError(f"{where}: exposure values must lie within ±{MAX_ABS_STOP:g} stops (2**stop overflows "
                         f"the network input far beyond that), got {[float(v) for v in values]}")
    if len(values) > 1 and max(values) == min(values):
        raise SceneError(f"{where}: all exposures are equal ({values[0]:g} stops); the frames of a scene must "
                         "be differently exposed")


_OFFSET_NOTED: set[str] = set()


def note_exposure_offset(values: Sequence[float], where: str) -> None:
    """Say once per process what exposure values that do not start at 0 mean. They are used as
    given, as the released code does: the network sees LDR**2.2 / 2**stop, so ``-4 -2 0`` feeds
    it 16 times the radiance of ``0 2 4`` and scores very differently on a checkpoint trained on
    brackets that start at 0."""
    if not values or values[0] == 0 or _OFFSET_NOTED:
        return
    _OFFSET_NOTED.add(where)
    LOG.warning(f"{where}: exposure values start at {values[0]:g}, not 0; they are used as given (as the released "
                f"code does): the network input LDR^2.2/2^stop is then {2.0 ** -values[0]:g} times that of the "
                "same bracket starting at 0, which the benchmark checkpoints were not trained on. Subtract the "
                "first value from every line to follow the benchmarks' convention")


def read_exposures(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> np.ndarray:
    """Exposure values in stops (float32), one per non-empty line of the exposure file."""
    scene_dir = Path(scene_dir)
    path = scene_dir / layout.exposure_file
    if not path.is_file():
        raise SceneError(f"scene {scene_dir.name}: exposure file missing: {path}")
    try:
        text = read_text_file(path)
    except UnicodeDecodeError as err:
        raise SceneError(f"scene {scene_dir.name}: exposure file {path} is not a text file ({err.reason} at "
                         f"byte {err.start})") from None
    try:
        values = [float(token) for token in text.split()]
    except ValueError as err:
        raise SceneError(f"scene {scene_dir.name}: cannot parse exposure file {path}: {err}") from None
    check_stops(values, f"scene {scene_dir.name}: exposure file {path}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise SceneError(
            f"scene {scene_dir.name}: exposures in {path} must be sorted shortest first, got {values}"
        )
    note_exposure_offset(values, f"scene {scene_dir.name} ({path})")
    return np.asarray(values, dtype=np.float32)


def scene_source_files(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> list[Path]:
    """Every existing file the decoded scene depends on (LDRs, exposures, label, masks)."""
    scene_dir = Path(scene_dir)
    optional = [scene_dir / layout.exposure_file, scene_dir / layout.label_file, scene_dir / layout.masks_file]
    return find_ldr_files(scene_dir, layout) + [p for p in optional if p.is_file()]


def scene_input_files(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> list[Path]:
    """The files a scene consists of, which no command may write over: every file matching the
    LDR pattern, the exposure file and the label. The masks preview counts as an LDR too unless
    the masks file beside it shows that it is a preview (a PNG dataset's ``masks.png``)."""
    scene_dir = Path(scene_dir)
    ldr_dir = layout.ldr_folder(scene_dir)
    ours = {layout.label_file} | ({layout.masks_preview_file} if (scene_dir / layout.masks_file).is_file() else set())
    files = [p for p in ldr_dir.glob(layout.ldr_pattern) if p.is_file() and p.name not in ours]
    return files + [p for p in (scene_dir / layout.exposure_file, scene_dir / layout.label_file) if p.is_file()]


def _missing_file_error(scene_dir: Path, path: Path, what: str) -> SceneError:
    hint = " (generate it with segmask/segment.py)" if what == "masks" else ""
    return SceneError(f"scene {scene_dir.name}: {what} file missing: {path}{hint}")


def _ldrs_and_exposures(scene_dir: Path, layout: SceneLayout) -> tuple[list[Path], np.ndarray]:
    """The LDR files and their exposure values, checked to be one value per file."""
    ldr_files = find_ldr_files(scene_dir, layout)
    exposures = read_exposures(scene_dir, layout)
    if len(exposures) != len(ldr_files):
        raise SceneError(
            f"scene {scene_dir.name}: {scene_dir / layout.exposure_file} holds {len(exposures)} exposure "
            f"values but there are {len(ldr_files)} LDR files ({', '.join(p.name for p in ldr_files)})"
        )
    return ldr_files, exposures


def check_scene_files(
    scene_dir: PathLike,
    layout: SceneLayout = SceneLayout(),
    require_label: bool = True,
    require_masks: bool = False,
) -> tuple[list[Path], np.ndarray]:
    """Cheap structural check without decoding images: files present, one exposure per LDR.

    Returns the sorted LDR files and their exposure values.
    """
    scene_dir = Path(scene_dir)
    ldr_files, exposures = _ldrs_and_exposures(scene_dir, layout)
    for required, file_name, what in ((require_label, layout.label_file, "label"),
                                      (require_masks, layout.masks_file, "masks")):
        if required and not (scene_dir / file_name).is_file():
            raise _missing_file_error(scene_dir, scene_dir / file_name, what)
    return ldr_files, exposures


def check_colour_agreement(files: Sequence[Path], grayscale: Sequence[bool], where: str) -> None:
    """Frames of one scene or bracket are all colour or all grayscale: a grayscale frame among
    colour ones is a different photograph or a broken export, and is refused naming both files.
    An all-grayscale set is used as gray RGB, which is said once."""
    if all(grayscale):
        if where not in _GRAY_NOTED:
            _GRAY_NOTED.add(where)
            LOG.warning(f"{where}: every frame is grayscale; each is used as RGB with three equal channels")
        return
    if any(grayscale):
        gray = files[list(grayscale).index(True)]
        colour = files[list(grayscale).index(False)]
        raise SceneError(f"{where}: {gray} is a grayscale image but {colour} is in colour; the frames must all be "
                         "colour (or all grayscale)")


_GRAY_NOTED: set[str] = set()


def _read_image(scene_name: str, reader: Callable[[Path], T], path: Path) -> T:
    try:
        return reader(path)
    except ImageReadError as err:
        raise SceneError(f"scene {scene_name}: {err}") from err


def read_segments(path: PathLike, scene_name: str = "") -> np.ndarray:
    """A masks file (H×W×1 float32 segment IDs, H×W accepted too) as H×W int64, validated."""
    path = Path(path)
    scene_name = scene_name or path.parent.name
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SceneError(f"scene {scene_name}: cannot read masks file {path}: {err}") from err
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise SceneError(f"scene {scene_name}: masks file {path} must be H×W×1, got shape {raw.shape}")
    if raw.dtype.kind not in "fiu":
        raise SceneError(f"scene {scene_name}: masks file {path} holds {raw.dtype} values; expected float32 "
                         "segment IDs (rewrite it with segmask/segment.py)")
    if raw.size and not np.all(np.isfinite(raw)):
        raise SceneError(f"scene {scene_name}: masks file {path} holds NaN or infinite IDs")
    if raw.size and (raw.min() < 0 or raw.max() > MAX_SEGMENT_ID or np.any(raw != np.round(raw))):
        raise SceneError(f"scene {scene_name}: masks file {path} must hold integer segment IDs from 0 to "
                         f"{MAX_SEGMENT_ID}, found values from {raw.min()} to {raw.max()} (rewrite it with "
                         "segmask/segment.py)")
    return raw.astype(np.int64)


def write_segments(path: PathLike, segments: np.ndarray) -> None:
    """Save an H×W map of segment IDs as the H×W×1 float32 masks file (atomically)."""
    if segments.ndim != 2:
        raise ValueError(f"expected an H×W segment map, got shape {segments.shape}")
    if segments.size and int(segments.max()) > MAX_SEGMENT_ID:
        raise ValueError("segment IDs from 2**24 on are not exact in float32")
    save_npy_atomically(Path(path), segments.astype(np.float32)[..., None])


def _check_label_values(scene_name: str, label: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(label)):
        raise SceneError(f"scene {scene_name}: label {path} contains NaN or infinite values")
    if np.any(label < 0):
        raise SceneError(f"scene {scene_name}: label {path} contains negative values")
    if label.size and float(label.max()) > LABEL_CEILING:
        raise SceneError(f"scene {scene_name}: label {path} holds values up to {float(label.max()):.3g}; labels are "
                         f"relative radiance (about 0 to 1 in the benchmarks), not above {LABEL_CEILING:g}")


def _check_size(scene_name: str, what: str, path: Path, shape: tuple[int, ...], size: tuple[int, int]) -> None:
    if tuple(shape[:2]) != size:
        raise SceneError(
            f"scene {scene_name}: {what} {path} is {shape[0]}×{shape[1]} but the LDRs are {size[0]}×{size[1]}"
        )


def load_scene(
    scene_dir: PathLike,
    layout: SceneLayout = SceneLayout(),
    require_label: bool = True,
    require_masks: bool = False,
) -> Scene:
    """Decode and validate one scene; the label and the masks are loaded whenever present."""
    scene_dir = Path(scene_dir)
    name = scene_dir.name
    ldr_files, exposures = check_scene_files(scene_dir, layout, require_label, require_masks)

    eight_bit_scale = RELEASED_8BIT_SCALE if layout.released_8bit_scaling else 255.0
    frames = [_read_image(name, partial(read_ldr_frame, eight_bit_scale=eight_bit_scale), path)
              for path in ldr_files]
    check_colour_agreement(ldr_files, [frame.grayscale for frame in frames], f"scene {name}")
    ldrs = [frame.rgb for frame in frames]
    size = ldrs[0].shape[:2]
    for path, ldr in zip(ldr_files, ldrs):
        _check_size(name, "LDR", path, ldr.shape, size)

    label = None
    label_path = scene_dir / layout.label_file
    if label_path.is_file():
        label = _read_image(name, read_hdr, label_path)
        _check_size(name, "label", label_path, label.shape, size)
        _check_label_values(name, label, label_path)

    segments = None
    masks_path = scene_dir / layout.masks_file
    if masks_path.is_file():
        segments = read_segments(masks_path, name)
        _check_size(name, "masks", masks_path, segments.shape, size)

    return Scene(name=name, path=scene_dir, ldrs=np.stack(ldrs), exposures=exposures,
                 label=label, segments=segments)


def check_requirements(scene: Scene, layout: SceneLayout, require_label: bool, require_masks: bool) -> None:
    """Raise if a decoded scene (e.g. one from a cache) lacks the label or masks the caller needs."""
    if require_label and scene.label is None:
        raise _missing_file_error(scene.path, scene.path / layout.label_file, "label")
    if require_masks and scene.segments is None:
        raise _missing_file_error(scene.path, scene.path / layout.masks_file, "masks")
