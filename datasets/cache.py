"""Scene reading with an optional cache of decoded arrays.

Decoding a 1500×1000 16-bit scene takes a noticeable fraction of a second, far longer than
cropping a training patch from it. Two caches are offered:

- ``"memory"``: decoded scenes are kept in this process (each DataLoader worker fills its own);
- ``"npy"``: decoded arrays are written once to ``<scene>/.cache/`` and memory-mapped afterwards,
  so all workers share them through the page cache.

Both hold a scene as a `CodedScene`: the LDR files' values as decoded (uint16 codes, channel
first) with the table that turns them into the float32 values of decoding, the label channel
first and the segment IDs as int32, a third of the bytes of the float32 scene. Training crops
are cut from the codes and turned into network input on the training device
(``preprocess.network_input_from_codes``); whole scenes (``SceneReader.load``) come back as the
float32 `Scene` of ``load_scene``, value for value.

Both are keyed on the size, modification time, change time and inode of every source file, so
a changed, added, removed or replaced file (e.g. a newly generated ``masks.npy``) makes the scene
decode again. The change time cannot be set back by copying tools or ``touch``: a file rewritten
with its old size and modification time still invalidates the cache.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np

from utils.atomic_io import save_npy_atomically, write_text_atomically
from .preprocess import code_values, encode_ldr
from .scene import PathLike, Scene, SceneError, SceneLayout, check_requirements, load_scene, scene_source_files

CacheMode = Optional[Literal["memory", "npy"]]
CACHE_MODES = (None, "memory", "npy")
CACHE_DIRNAME = ".cache"
_FORMAT_VERSION = 3
_ARRAYS = ("codes", "code_tables", "exposures", "label", "segments")

Signature = list[list[Union[str, int]]]


def source_signature(scene_dir: PathLike, layout: SceneLayout = SceneLayout()) -> Signature:
    """[name, size, mtime_ns, ctime_ns, inode] of every file the decoded scene depends on."""
    scene_dir = Path(scene_dir)
    signature = []
    for path in scene_source_files(scene_dir, layout):
        stat = path.stat()
        signature.append([path.relative_to(scene_dir).as_posix(), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                          stat.st_ino])
    return signature


@dataclass
class CodedScene:
    """A decoded scene as the caches hold it and training crops it: ``codes`` n×3×H×W uint16 (the
    LDR files' values; channel first, so a crop copies whole rows), ``code_tables`` (n,) the
    ``preprocess.LDR_CODE_SCALES`` entry each exposure's codes are divided by, ``exposures`` (n,)
    float32 stops, ``label`` 3×H×W float32 and ``segments`` H×W int32 (either may be None)."""

    name: str
    path: Path
    codes: np.ndarray
    code_tables: np.ndarray
    exposures: np.ndarray
    label: Optional[np.ndarray] = None
    segments: Optional[np.ndarray] = None

    @property
    def num_exposures(self) -> int:
        return int(self.codes.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.codes.shape[2]), int(self.codes.shape[3])

    def to_scene(self) -> Scene:
        """The float32 `Scene` that ``load_scene`` decodes from the same files, value for value
        (the label stays a view of the cached array)."""
        ldrs = np.stack([code_values(int(table))[codes].transpose(1, 2, 0)
                         for codes, table in zip(self.codes, self.code_tables)])
        label = None if self.label is None else self.label.transpose(1, 2, 0)
        segments = None if self.segments is None else self.segments.astype(np.int64)
        return Scene(name=self.name, path=self.path, ldrs=ldrs, exposures=np.array(self.exposures), label=label,
                     segments=segments)


def encode_scene(scene: Scene) -> CodedScene:
    """The `CodedScene` of a decoded scene (exact: its `to_scene` gives the same values back)."""
    codes, tables = [], []
    for index, ldr in enumerate(scene.ldrs):
        try:
            frame_codes, table = encode_ldr(ldr)
        except ValueError as err:
            raise SceneError(f"scene {scene.name}: exposure {index + 1}: {err}") from None
        codes.append(frame_codes.transpose(2, 0, 1))
        tables.append(table)
    label = None if scene.label is None else np.ascontiguousarray(scene.label.transpose(2, 0, 1), dtype=np.float32)
    segments = None if scene.segments is None else np.asarray(scene.segments, dtype=np.int32)
    return CodedScene(name=scene.name, path=scene.path, codes=np.ascontiguousarray(np.stack(codes)),
                      code_tables=np.asarray(tables, dtype=np.int64), exposures=np.asarray(scene.exposures,
                                                                                          dtype=np.float32),
                      label=label, segments=segments)


class NpySceneCache:
    """Decoded scene arrays stored as .npy files in ``<scene>/.cache/`` and memory-mapped back."""

    def __init__(self, layout: SceneLayout = SceneLayout(), dirname: str = CACHE_DIRNAME):
        self.layout = layout
        self.dirname = dirname
        self._unwritable_warned = False

    def cache_dir(self, scene_dir: PathLike) -> Path:
        return Path(scene_dir) / self.dirname

    def load(self, scene_dir: PathLike) -> Scene:
        """The float32 scene (see ``load_coded``)."""
        return self.load_coded(scene_dir).to_scene()

    def load_coded(self, scene_dir: PathLike) -> CodedScene:
        """The cached scene (memory-mapped) when it matches the source files, else decode it and
        refresh the cache."""
        scene_dir = Path(scene_dir)
        signature = source_signature(scene_dir, self.layout)
        cached = self._read(scene_dir, signature)
        if cached is not None:
            return cached
        scene = encode_scene(load_scene(scene_dir, self.layout, require_label=False, require_masks=False))
        try:
            self._write(scene, signature)
        except OSError as err:
            if not self._unwritable_warned:
                warnings.warn(f"cannot write the scene cache in {self.cache_dir(scene_dir)} ({err}); "
                              "scenes are decoded without caching", stacklevel=2)
                self._unwritable_warned = True
        return scene

    def _read(self, scene_dir: Path, signature: Signature) -> Optional[CodedScene]:
        cache_dir = self.cache_dir(scene_dir)
        try:
            manifest = json.loads((cache_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        if manifest.get("version") != _FORMAT_VERSION or manifest.get("sources") != signature:
            return None
        try:
            arrays = {name: np.load(cache_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                      for name in manifest["arrays"]}
        except (OSError, ValueError, KeyError):
            return None
        return CodedScene(name=scene_dir.name, path=scene_dir, codes=arrays["codes"],
                          code_tables=np.array(arrays["code_tables"]), exposures=np.array(arrays["exposures"]),
                          label=arrays.get("label"), segments=arrays.get("segments"))

    def _write(self, scene: CodedScene, signature: Signature) -> None:
        cache_dir = self.cache_dir(scene.path)
        cache_dir.mkdir(exist_ok=True)
        stored = []
        for name in _ARRAYS:
            array = getattr(scene, name)
            if array is not None:
                save_npy_atomically(cache_dir / f"{name}.npy", array)
                stored.append(name)
        manifest = {"version": _FORMAT_VERSION, "sources": signature, "arrays": stored}
        write_text_atomically(cache_dir / "manifest.json", json.dumps(manifest))


class SceneReader:
    """Loads validated scenes of one layout through the chosen cache (None, "memory" or "npy").

    Every call checks the source files (one stat each). A pickled reader (a DataLoader worker
    started by spawn) leaves its memory cache behind: each process fills its own."""

    def __init__(self, layout: SceneLayout = SceneLayout(), cache: CacheMode = None):
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        self.layout = layout
        self.cache = cache
        # scenes read the released way get a cache of their own: the same files, other arrays
        dirname = CACHE_DIRNAME + ("_released_8bit" if layout.released_8bit_scaling else "")
        self._npy = NpySceneCache(layout, dirname) if cache == "npy" else None
        self._memory: dict[Path, tuple[Signature, CodedScene]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_memory"] = {}
        return state

    def load(self, scene_dir: PathLike, require_label: bool = True, require_masks: bool = False) -> Scene:
        """Decoded float32 scene; raises SceneError when it is invalid or lacks a required label/masks."""
        scene_dir = Path(scene_dir)
        if self.cache is None:
            return load_scene(scene_dir, self.layout, require_label, require_masks)
        return self.load_coded(scene_dir, require_label, require_masks).to_scene()

    def load_coded(self, scene_dir: PathLike, require_label: bool = True, require_masks: bool = False
                   ) -> CodedScene:
        """The scene as codes (`CodedScene`); raises SceneError like ``load``."""
        scene_dir = Path(scene_dir)
        if self.cache is None:
            return encode_scene(load_scene(scene_dir, self.layout, require_label, require_masks))
        if self._npy is not None:
            scene = self._npy.load_coded(scene_dir)
        else:
            scene = self._load_from_memory(scene_dir)
        check_requirements(scene, self.layout, require_label, require_masks)  # type: ignore[arg-type]
        return scene

    def _load_from_memory(self, scene_dir: Path) -> CodedScene:
        signature = source_signature(scene_dir, self.layout)
        entry = self._memory.get(scene_dir)
        if entry is not None and entry[0] == signature:
            return entry[1]
        scene = encode_scene(load_scene(scene_dir, self.layout, require_label=False, require_masks=False))
        self._memory[scene_dir] = (signature, scene)
        return scene
