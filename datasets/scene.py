"""One scene of a Kalantari / Prabhakar / Tel style dataset: finding, reading and validating it.

Layout (all file names are options, see `SceneLayout`)::

    <dataset_dir>/<split>/<scene>/[<ldr_subdir>/]*.tif   LDR exposures, sorted name = shortest first
    <dataset_dir>/<split>/<scene>/exposure.txt           one exposure value (stops) per LDR
    <dataset_dir>/<split>/<scene>/HDRImg.hdr             label, aligned to the middle exposure
    <dataset_dir>/<split>/<scene>/masks.npy              H×W×1 float32 segment IDs

`load_scene` reads and validates everything before returning, so a `Scene` is never half-loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from utils.image_io import RELEASED_8BIT_SCALE, ImageReadError, read_hdr, read_ldr

from utils.atomic_io import save_npy_atomically

PathLike = Union[str, Path]

MAX_SEGMENT_ID = 2**24 - 1
"""Largest segment ID a masks file may hold: IDs are stored as float32, exact up to 2**24, and
the per-segment tables of training are sized by the largest ID in use."""
LABEL_CEILING = 1e6
"""Labels are relative radiance (Kalantari's lie in about [0, 1]); a value above this is a broken file."""


class SceneError(ValueError):
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


def list_scenes(dataset_dir: PathLike, split: str) -> list[Path]:
    """Sorted scene folders of `<dataset_dir>/<split>`; hidden folders are skipped."""
    split_dir = Path(dataset_dir) / split
    if not split_dir.is_dir():
        raise SceneError(f"split folder not found: {split_dir}")
    scenes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not scenes:
        raise SceneError(f"split folder holds no scene folders: {split_dir}")
    return scenes


def find_ldr_files(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> list[Path]:
    """The scene's LDR files sorted by name (= by exposure); the masks preview is excluded."""
    scene_dir = Path(scene_dir)
    ldr_dir = scene_dir / layout.ldr_subdir if layout.ldr_subdir else scene_dir
    not_ldrs = {layout.masks_preview_file, layout.label_file}
    files = sorted(p for p in ldr_dir.glob(layout.ldr_pattern) if p.is_file() and p.name not in not_ldrs)
    if not files:
        raise SceneError(f"scene {scene_dir.name}: no LDR files matching {layout.ldr_pattern!r} in {ldr_dir}")
    return files


def reference_ldr_file(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> Path:
    """The middle of the sorted LDR files: the exposure the label and the masks belong to."""
    files = find_ldr_files(scene_dir, layout)
    return files[len(files) // 2]


def read_exposures(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> np.ndarray:
    """Exposure values in stops (float32), one per non-empty line of the exposure file."""
    scene_dir = Path(scene_dir)
    path = scene_dir / layout.exposure_file
    if not path.is_file():
        raise SceneError(f"scene {scene_dir.name}: exposure file missing: {path}")
    try:
        values = [float(token) for token in path.read_text().split()]
    except ValueError as err:
        raise SceneError(f"scene {scene_dir.name}: cannot parse exposure file {path}: {err}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise SceneError(f"scene {scene_dir.name}: exposure file {path} must hold finite numbers, got {values}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise SceneError(
            f"scene {scene_dir.name}: exposures in {path} must be sorted shortest first, got {values}"
        )
    return np.asarray(values, dtype=np.float32)


def scene_source_files(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> list[Path]:
    """Every existing file the decoded scene depends on (LDRs, exposures, label, masks)."""
    scene_dir = Path(scene_dir)
    optional = [scene_dir / layout.exposure_file, scene_dir / layout.label_file, scene_dir / layout.masks_file]
    return find_ldr_files(scene_dir, layout) + [p for p in optional if p.is_file()]


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


def _read_image(scene_name: str, reader: Callable[[Path], np.ndarray], path: Path) -> np.ndarray:
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
    ldrs = [_read_image(name, partial(read_ldr, eight_bit_scale=eight_bit_scale), path) for path in ldr_files]
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
