"""Scene reading with an optional cache of decoded arrays.

Decoding a 1500×1000 16-bit scene takes a noticeable fraction of a second, far longer than
cropping a training patch from it. Two caches are offered:

- ``"memory"``: decoded scenes are kept in this process (each DataLoader worker fills its own);
- ``"npy"``: decoded arrays are written once to ``<scene>/.cache/`` and memory-mapped afterwards,
  so all workers share them through the page cache.

Both are keyed on the size, modification time, change time and inode of every source file, so
a changed, added, removed or replaced file (e.g. a newly generated ``masks.npy``) makes the scene
decode again. The change time cannot be set back by copying tools or ``touch``: a file rewritten
with its old size and modification time still invalidates the cache.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np

from utils.atomic_io import save_npy_atomically, write_text_atomically
from .scene import PathLike, Scene, SceneLayout, check_requirements, load_scene, scene_source_files

CacheMode = Optional[Literal["memory", "npy"]]
CACHE_MODES = (None, "memory", "npy")
CACHE_DIRNAME = ".cache"
_FORMAT_VERSION = 2
_ARRAYS = ("ldrs", "exposures", "label", "segments")

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


class NpySceneCache:
    """Decoded scene arrays stored as .npy files in ``<scene>/.cache/`` and memory-mapped back."""

    def __init__(self, layout: SceneLayout = SceneLayout(), dirname: str = CACHE_DIRNAME):
        self.layout = layout
        self.dirname = dirname
        self._unwritable_warned = False

    def cache_dir(self, scene_dir: PathLike) -> Path:
        return Path(scene_dir) / self.dirname

    def load(self, scene_dir: PathLike) -> Scene:
        """The cached scene when it matches the source files, else decode it and refresh the cache."""
        scene_dir = Path(scene_dir)
        signature = source_signature(scene_dir, self.layout)
        cached = self._read(scene_dir, signature)
        if cached is not None:
            return cached
        scene = load_scene(scene_dir, self.layout, require_label=False, require_masks=False)
        try:
            self._write(scene, signature)
        except OSError as err:
            if not self._unwritable_warned:
                warnings.warn(f"cannot write the scene cache in {self.cache_dir(scene_dir)} ({err}); "
                              "scenes are decoded without caching", stacklevel=2)
                self._unwritable_warned = True
        return scene

    def _read(self, scene_dir: Path, signature: Signature) -> Optional[Scene]:
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
        return Scene(name=scene_dir.name, path=scene_dir, ldrs=arrays["ldrs"],
                     exposures=np.array(arrays["exposures"]), label=arrays.get("label"),
                     segments=arrays.get("segments"))

    def _write(self, scene: Scene, signature: Signature) -> None:
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
    """Loads validated scenes of one layout through the chosen cache (None, "memory" or "npy")."""

    def __init__(self, layout: SceneLayout = SceneLayout(), cache: CacheMode = None):
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        self.layout = layout
        self.cache = cache
        # scenes read the released way get a cache of their own: the same files, other arrays
        dirname = CACHE_DIRNAME + ("_released_8bit" if layout.released_8bit_scaling else "")
        self._npy = NpySceneCache(layout, dirname) if cache == "npy" else None
        self._memory: dict[Path, tuple[Signature, Scene]] = {}

    def load(self, scene_dir: PathLike, require_label: bool = True, require_masks: bool = False) -> Scene:
        """Decoded scene; raises SceneError when it is invalid or lacks a required label/masks."""
        scene_dir = Path(scene_dir)
        if self.cache is None:
            return load_scene(scene_dir, self.layout, require_label, require_masks)
        if self._npy is not None:
            scene = self._npy.load(scene_dir)
        else:
            scene = self._load_from_memory(scene_dir)
        check_requirements(scene, self.layout, require_label, require_masks)
        return scene

    def _load_from_memory(self, scene_dir: Path) -> Scene:
        signature = source_signature(scene_dir, self.layout)
        entry = self._memory.get(scene_dir)
        if entry is not None and entry[0] == signature:
            return entry[1]
        scene = load_scene(scene_dir, self.layout, require_label=False, require_masks=False)
        self._memory[scene_dir] = (signature, scene)
        return scene
