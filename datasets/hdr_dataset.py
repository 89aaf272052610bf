"""PyTorch datasets over a benchmark split: random training patches and whole scenes.

Both read scenes through one `SceneReader` and turn them into network input with
`build_network_input`, so the preprocessing exists in one place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .cache import CacheMode, SceneReader
from .preprocess import build_network_input, random_crop_box, random_flip_axis
from .scene import PathLike, Scene, SceneError, SceneLayout, check_scene_files, list_scenes


def _segments_or_zeros(scene: Scene, use_masks: bool) -> np.ndarray:
    if use_masks:
        return np.asarray(scene.segments, dtype=np.int64)
    return np.zeros(scene.size, dtype=np.int64)


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor owning a copy of the data (cached arrays may be read-only memory maps)."""
    return torch.from_numpy(np.array(array, order="C", copy=True)).to(dtype)


class _SplitDataset(Dataset):
    """Scene folders of one split, checked up front, decoded on demand through a SceneReader."""

    def __init__(self, dataset_dir: PathLike, split: str, layout: SceneLayout, cache: CacheMode,
                 require_label: bool, require_masks: bool):
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        self.layout = layout
        self.require_label = require_label
        self.require_masks = require_masks
        self.scene_dirs = list_scenes(self.dataset_dir, split)
        for scene_dir in self.scene_dirs:
            check_scene_files(scene_dir, layout, require_label, require_masks)
        self.reader = SceneReader(layout, cache)

    @property
    def scene_names(self) -> list[str]:
        return [p.name for p in self.scene_dirs]

    def load_scene(self, index: int) -> Scene:
        """The decoded, validated scene number `index` (in sorted order)."""
        return self.reader.load(self.scene_dirs[index], self.require_label, self.require_masks)

    def scenes(self, progress: bool = False) -> Iterator[Scene]:
        """Every scene, decoded and validated in order (filling the cache): a run that walks them
        first finds a broken file before it writes or trains anything."""
        for index in tqdm(range(len(self.scene_dirs)), desc=f"checking {self.split}", unit="scene", leave=False,
                          disable=not progress):
            yield self.load_scene(index)


class HDRTrainDataset(_SplitDataset):
    """Random patch_size² crops with random flips; every scene is visited `repeat` times per epoch.

    A sample is {'input': (6n,p,p) float32, 'label': (3,p,p) float32, 'segments': (p,p) int64,
    'scene': name}. Randomness comes from torch's RNG, so DataLoader workers differ and a
    seeded run is reproducible. `segments` is all zeros when `with_masks` is False.
    """

    def __init__(self, dataset_dir: PathLike, split: str = "Training", patch_size: int = 128,
                 repeat: int = 100, with_masks: bool = True, cache: CacheMode = "npy",
                 layout: SceneLayout = SceneLayout()):
        super().__init__(dataset_dir, split, layout, cache, require_label=True, require_masks=with_masks)
        if patch_size <= 0 or repeat <= 0:
            raise ValueError(f"patch_size and repeat must be positive, got {patch_size} and {repeat}")
        self.patch_size = patch_size
        self.repeat = repeat
        self.with_masks = with_masks

    def __len__(self) -> int:
        return self.repeat * len(self.scene_dirs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.load_scene(index % len(self.scene_dirs))
        height, width = scene.size
        p = self.patch_size
        if height < p or width < p:
            raise SceneError(f"scene {scene.name}: {height}×{width} is smaller than the {p}×{p} patch")
        top, left = random_crop_box((height, width), p)
        window = (slice(top, top + p), slice(left, left + p))
        ldrs = scene.ldrs[:, window[0], window[1]]
        label = scene.label[window]
        segments = _segments_or_zeros(scene, self.with_masks)[window]

        axis = random_flip_axis()
        if axis is not None:
            ldrs = np.flip(ldrs, axis=axis + 1)
            label = np.flip(label, axis=axis)
            segments = np.flip(segments, axis=axis)

        return {
            "input": _tensor(build_network_input(ldrs, scene.exposures), torch.float32),
            "label": _tensor(np.transpose(label, (2, 0, 1)), torch.float32),
            "segments": _tensor(segments, torch.int64),
            "scene": scene.name,
        }


class HDRFullImageDataset(_SplitDataset):
    """Whole scenes in sorted order, for evaluation, inference and the metric-guided update.

    A sample is {'input': (6n,H,W) float32, 'segments': (H,W) int64, 'exposures': (n,) float32
    stops, 'scene' and 'name': the scene name} plus 'label': (3,H,W) float32 whenever the scene
    has one. With `require_label` False, scenes without a label are accepted (inference).
    """

    def __init__(self, dataset_dir: PathLike, split: str = "Test", with_masks: bool = False,
                 cache: CacheMode = "npy", layout: SceneLayout = SceneLayout(), require_label: bool = True):
        super().__init__(dataset_dir, split, layout, cache, require_label=require_label,
                         require_masks=with_masks)
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.scene_dirs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.load_scene(index)
        sample: dict[str, Any] = {
            "input": _tensor(build_network_input(scene.ldrs, scene.exposures), torch.float32),
            "segments": _tensor(_segments_or_zeros(scene, self.with_masks), torch.int64),
            "exposures": _tensor(scene.exposures, torch.float32),
            "scene": scene.name,
            "name": scene.name,
        }
        if scene.label is not None:
            sample["label"] = _tensor(np.transpose(scene.label, (2, 0, 1)), torch.float32)
        return sample

