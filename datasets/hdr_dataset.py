"""PyTorch datasets over a benchmark split: random training patches and whole scenes.

Both read scenes through one `SceneReader`. From a cache, whole scenes and training crops are
turned from the cached LDR codes into network input by lookup
(``preprocess.network_input_from_codes``, bit for bit `build_network_input`), crops on the
training device when the dataset is ``encoded`` (``to_network_batch``); without a cache whole
scenes go through `build_network_input`.
"""
from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (its exit hook, which joins the workers, must be registered before ours)
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info
from tqdm import tqdm

from .cache import CacheMode, CodedScene, SceneReader
from .preprocess import (
    build_network_input,
    exposure_times,
    full_image_sample,
    network_input_from_codes,
    random_crop_box,
    random_flip_axis,
)
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
        # the number of LDR exposures of every scene (a split may mix them: an optional frame)
        self.exposure_counts = [len(check_scene_files(scene_dir, layout, require_label, require_masks)[0])
                                for scene_dir in self.scene_dirs]
        self.reader = SceneReader(layout, cache)

    @property
    def scene_names(self) -> list[str]:
        return [p.name for p in self.scene_dirs]

    def load_scene(self, index: int) -> Scene:
        """The decoded, validated scene number `index` (in sorted order)."""
        return self.reader.load(self.scene_dirs[index], self.require_label, self.require_masks)

    def fill_cache(self, progress: bool = False) -> None:
        """Decode and validate every scene into the reader's cache (a no-op for scenes it holds)."""
        for scene_dir in tqdm(self.scene_dirs, desc=f"caching {self.split}", unit="scene", leave=False,
                              disable=not progress):
            self.reader.load_coded(scene_dir, self.require_label, self.require_masks)

    def scenes(self, progress: bool = False) -> Iterator[Scene]:
        """Every scene, decoded and validated in order (filling the cache): a run that walks them
        first finds a broken file before it writes or trains anything."""
        for index in tqdm(range(len(self.scene_dirs)), desc=f"checking {self.split}", unit="scene", leave=False,
                          disable=not progress):
            yield self.load_scene(index)


CropIndex = Union[int, tuple[int, int, int]]
"""A crop number, or (crop number, epoch seed, epoch count) from ``EpochSeededBatches``."""


class HDRTrainDataset(_SplitDataset):
    """Random patch_size² crops with random flips; every scene is visited `repeat` times per epoch.

    A sample is {'input': (6n,p,p) float32, 'label': (3,p,p) float32, 'segments': (p,p) int64,
    'scene': name}. Randomness comes from torch's RNG, so DataLoader workers differ and a
    seeded run is reproducible. `segments` is all zeros when `with_masks` is False.

    ``encoded`` samples (the trainer's) carry the crop's LDR codes instead of 'input':
    'ldr_codes' (n,3,p,p) uint16, 'code_tables' (n,) int64 and 'exposure_times' (n,) float32
    (NumPy arrays: host data, read without touching the device), and 'segments' as int32;
    ``to_network_batch`` turns a batch of them into the same 'input' (and int64 segments) on the
    training device. A DataLoader with ``collate_fn=collate_crops`` (``crop_loader``) gets each
    batch cut straight into batch tensors (``__getitems__``), without a second copy.

    Each process opens a scene's cached arrays once and reuses them; an index carrying an epoch
    (``EpochSeededBatches``) makes it check the scenes' files again once per epoch and, in a
    DataLoader worker, reseed torch's RNG as a freshly started worker of that epoch would be.
    """

    def __init__(self, dataset_dir: PathLike, split: str = "Training", patch_size: int = 128,
                 repeat: int = 100, with_masks: bool = True, cache: CacheMode = "npy",
                 layout: SceneLayout = SceneLayout(), encoded: bool = False):
        super().__init__(dataset_dir, split, layout, cache, require_label=True, require_masks=with_masks)
        if patch_size <= 0 or repeat <= 0:
            raise ValueError(f"patch_size and repeat must be positive, got {patch_size} and {repeat}")
        self.patch_size = patch_size
        self.repeat = repeat
        self.with_masks = with_masks
        self.encoded = encoded
        self._open: dict[int, CodedScene] = {}
        self._epoch_seed: Optional[tuple[int, int]] = None
        self._ring: Optional[_BufferRing] = None  # a loader worker's batch buffers

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = {}  # memory maps would travel as whole arrays; every process opens its own
        state["_ring"] = None
        return state

    def __len__(self) -> int:
        return self.repeat * len(self.scene_dirs)

    def crop_exposure_counts(self) -> list[int]:
        """The exposure count of every crop index (crop i comes from scene i mod the scene count)."""
        return [self.exposure_counts[index % len(self.scene_dirs)] for index in range(len(self))]

    def _enter_epoch(self, index: CropIndex) -> int:
        """The crop number of ``index``; a new epoch first drops the opened scenes and, in a
        worker, reseeds torch's RNG with seed + worker id (what a new worker's start does)."""
        if not isinstance(index, tuple):
            return int(index)
        index, seed, epoch = index
        if (seed, epoch) != self._epoch_seed:
            self._epoch_seed = (seed, epoch)
            self._open.clear()
            worker = get_worker_info()
            if worker is not None:
                torch.manual_seed(seed + worker.id)
        return index

    def coded_scene(self, index: int) -> CodedScene:
        """Scene number ``index`` as codes, opened once per process (and epoch)."""
        scene = self._open.get(index)
        if scene is None:
            scene = self.reader.load_coded(self.scene_dirs[index], self.require_label, self.require_masks)
            self._open[index] = scene
        return scene

    def _crop_into(self, scene: CodedScene, codes: np.ndarray, label: np.ndarray,
                   segments: Optional[np.ndarray]) -> None:
        """Draw a crop and a flip (torch's RNG: corner, then flip) and write them into the given
        n×3×p×p, 3×p×p and p×p arrays (segments None: no masks)."""
        height, width = scene.size
        p = self.patch_size
        if height < p or width < p:
            raise SceneError(f"scene {scene.name}: {height}×{width} is smaller than the {p}×{p} patch")
        top, left = random_crop_box((height, width), p)
        rows, cols = slice(top, top + p), slice(left, left + p)
        np.copyto(codes, scene.codes[:, :, rows, cols])
        np.copyto(label, scene.label[:, rows, cols])
        if segments is not None:
            np.copyto(segments, scene.segments[rows, cols])
        axis = random_flip_axis()
        if axis is not None:
            for array in (codes, label) if segments is None else (codes, label, segments):
                flip_in_place(array, axis)

    def __getitems__(self, indices: Sequence[CropIndex]) -> list[dict[str, Any]]:
        """The crops of ``indices`` cut straight into batch tensors (see ``CropBatch``)."""
        numbers = [self._enter_epoch(index) for index in indices]
        scenes = [self.coded_scene(number % len(self.scene_dirs)) for number in numbers]
        if len({scene.num_exposures for scene in scenes}) > 1:  # one by one: collating them fails as it always did
            return [self.__getitems__([index])[0] for index in indices]
        batch, p, count = len(scenes), self.patch_size, scenes[0].num_exposures
        layout = _Layout({"ldr_codes": ((batch, count, 3, p, p), torch.uint16),
                          "label": ((batch, 3, p, p), torch.float32), "segments": ((batch, p, p), torch.int32)})
        buffer = None
        if self.encoded and get_worker_info() is not None:  # into a buffer the training process gives back
            if self._ring is None:
                self._ring = _BufferRing()
            buffer = self._ring.lend(layout.nbytes)
            arrays = layout.views(buffer)
        else:
            arrays = {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in layout.entries.items()}
        codes, label, segments = arrays["ldr_codes"], arrays["label"], arrays["segments"]
        for b, scene in enumerate(scenes):
            self._crop_into(scene, codes[b].numpy(), label[b].numpy(),
                            segments[b].numpy() if self.with_masks else None)
        if not self.with_masks:
            segments.zero_()
        tables = np.stack([np.asarray(scene.code_tables, dtype=np.int64) for scene in scenes])
        times = np.stack([exposure_times(scene.exposures) for scene in scenes])
        out: dict[str, Any] = {"label": label, "scene": [scene.name for scene in scenes]}
        if self.encoded:
            out.update(ldr_codes=codes, code_tables=tables, exposure_times=times, segments=segments)
        else:
            out.update(input=network_input_from_codes(codes, tables, times), segments=segments.long())
        return CropBatch(out, buffer, layout)

    def __getitem__(self, index: CropIndex) -> dict[str, Any]:
        return self.__getitems__([index])[0]


def flip_in_place(array: np.ndarray, axis: int) -> None:
    """Flip a C-contiguous …×p×p array in place along its rows (axis 0: vertical) or its
    columns (axis 1: horizontal), with OpenCV's flip (a reversed-stride copy is several times slower)."""
    p = array.shape[-1]
    if axis == 1:
        rows = array.reshape(-1, p)  # every row of every plane reversed at once
        cv2.flip(rows, 1, dst=rows)
        return
    for plane in array.reshape(-1, array.shape[-2], p):
        cv2.flip(plane, 0, dst=plane)


_HEADER = 64
"""Bytes before a shared batch buffer's arrays: its lent flag (int64), then alignment padding."""
_RING_SIZE = 8
"""Buffers a loader worker keeps for reuse: its prefetched batches, the one in the training step
and the one being pinned fit with room to spare."""


class _Layout:
    """Where the arrays of a batch lie in one byte buffer (after the header, 64-byte aligned)."""

    def __init__(self, entries: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        self.entries = entries
        self.offsets: dict[str, int] = {}
        offset = _HEADER
        for name, (shape, dtype) in entries.items():
            self.offsets[name] = offset
            size = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            offset += -(-size // 64) * 64
        self.nbytes = offset

    def views(self, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
        """The arrays as views of ``buffer`` (uint8, at least ``nbytes`` long)."""
        views = {}
        for name, (shape, dtype) in self.entries.items():
            start = self.offsets[name]
            size = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            views[name] = buffer[start:start + size].view(dtype).view(shape)
        return views


def _lent_flag(buffer: torch.Tensor) -> torch.Tensor:
    return buffer[:8].view(torch.int64)


class _BufferRing:
    """A worker's shared-memory batch buffers, reused batch after batch: making shared memory and
    touching its fresh pages is most of what handing a batch to the training process costs. A
    buffer is written only while its lent flag is clear: the training process clears it
    (``SharedBatch.release``) once it is done with the batch; a buffer never given back is never
    written again, and when none is free a new one is made."""

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []

    def lend(self, nbytes: int) -> torch.Tensor:
        for buffer in self.buffers:
            if buffer.numel() >= nbytes and not bool(_lent_flag(buffer)[0]):
                break
        else:
            buffer = torch.zeros(nbytes, dtype=torch.uint8).share_memory_()
            if len(self.buffers) < _RING_SIZE:
                self.buffers.append(buffer)
        _lent_flag(buffer).fill_(1)
        return buffer


class SharedBatch(dict):
    """A batch from a loader worker whose tensors are views of one shared-memory buffer the worker
    lends (sent as that one buffer). ``release`` gives it back: the worker may then write the next
    batch into it, so the batch must not be used afterwards. Pinning it (``pin_memory``, the
    DataLoader's pinning thread) copies it out and gives the buffer back at once."""

    def __init__(self, items: Mapping[str, Any], buffer: Optional[torch.Tensor], layout: Optional[_Layout]) -> None:
        super().__init__(items)
        self._buffer = buffer
        self._layout = layout

    def __reduce__(self) -> tuple:
        names = set(self._layout.entries) if self._layout is not None else set()
        rest = {key: value for key, value in self.items() if key not in names}
        return _rebuild_shared_batch, (self._buffer, self._layout, rest)

    def release(self) -> None:
        """Give the buffer back to its worker (a no-op for a pinned copy)."""
        if self._buffer is not None:
            _lent_flag(self._buffer).zero_()
            self._buffer = None

    def pin_memory(self) -> dict[str, Any]:
        pinned = {key: value.pin_memory() if isinstance(value, torch.Tensor) else value for key, value in self.items()}
        self.release()
        return pinned


def _rebuild_shared_batch(buffer: Optional[torch.Tensor], layout: Optional[_Layout], rest: dict) -> SharedBatch:
    views = layout.views(buffer) if buffer is not None and layout is not None else {}
    return SharedBatch({**views, **rest}, buffer, layout)


def release_batch(batch: Any) -> None:
    """Give a loader batch's shared buffer back to its worker once the step is done with it."""
    if isinstance(batch, SharedBatch):
        batch.release()


class CropBatch(list):
    """The samples of a batch cut straight into batch tensors: a list of per-sample views for any
    collate function, and the batch itself, which ``collate_crops`` hands on without copying."""

    def __init__(self, batch: dict[str, Any], buffer: Optional[torch.Tensor] = None,
                 layout: Optional[_Layout] = None) -> None:
        size = len(batch["scene"])
        super().__init__({key: value[b] for key, value in batch.items()} for b in range(size))
        self.batch = batch
        self.buffer = buffer
        self.layout = layout


def collate_crops(samples: Sequence[Any]) -> Any:
    """``default_collate``, except that a `CropBatch` is already its own batch (a `SharedBatch`
    when its tensors lie in a worker's lent buffer)."""
    if not isinstance(samples, CropBatch):
        return default_collate(samples)
    return samples.batch if samples.buffer is None else SharedBatch(samples.batch, samples.buffer, samples.layout)


class HDRFullImageDataset(_SplitDataset):
    """Whole scenes in sorted order, for evaluation, inference and the metric-guided update.

    A sample (``preprocess.full_image_sample``) is {'input': (6n,H,W) float32, 'ldrs': (n,3,H,W)
    float32, the LDRs the input holds, 'segments': (H,W) int64, 'exposures': (n,) float32 stops,
    'scene': the scene name} plus 'label': (3,H,W) float32 whenever the scene has one. With `require_label` False, scenes without a label are accepted (inference).
    """

    def __init__(self, dataset_dir: PathLike, split: str = "Test", with_masks: bool = False,
                 cache: CacheMode = "npy", layout: SceneLayout = SceneLayout(), require_label: bool = True):
        super().__init__(dataset_dir, split, layout, cache, require_label=require_label,
                         require_masks=with_masks)
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.scene_dirs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.reader.cache is not None:
            return self._from_codes(index)
        scene = self.load_scene(index)
        label = None if scene.label is None else _tensor(np.transpose(scene.label, (2, 0, 1)), torch.float32)
        return full_image_sample(_tensor(build_network_input(scene.ldrs, scene.exposures), torch.float32),
                                 scene.exposures, scene.name,
                                 _tensor(_segments_or_zeros(scene, self.with_masks), torch.int64), label)

    def _from_codes(self, index: int) -> dict[str, Any]:
        """The same sample from a cached scene's codes: the input by lookup, as for training
        crops (bit for bit ``build_network_input``, without a power per pixel)."""
        scene = self.reader.load_coded(self.scene_dirs[index], self.require_label, self.require_masks)
        codes = torch.from_numpy(np.array(scene.codes))[None]
        times = exposure_times(scene.exposures)[None]
        with_segments = self.with_masks and scene.segments is not None
        segments = (_tensor(scene.segments, torch.int64) if with_segments
                    else torch.zeros(scene.size, dtype=torch.int64))
        label = None if scene.label is None else _tensor(scene.label, torch.float32)
        return full_image_sample(network_input_from_codes(codes, np.asarray(scene.code_tables)[None], times)[0],
                                 scene.exposures, scene.name, segments, label)



class ExposureGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of crop indices in which every batch comes from scenes of one exposure
    count, so a split that mixes counts (an optional frame) collates; for ``num_replicas``
    processes, this process's (``rank``) share of every step.

    One permutation of all the indices is drawn from ``generator`` when iteration starts; walking
    it, each index joins the pending step of its count, and a step is emitted as soon as it holds
    ``batch_size × num_replicas`` indices; rank r takes the step's indices r, r + num_replicas, ….
    Steps left incomplete at the end are dropped (drop_last per count), so every rank gets the same
    number of batches. With one count this is exactly ``RandomSampler(generator=generator)`` batched
    with drop_last (one process), or ``DistributedSampler(seed=s, drop_last=True)`` at epoch e
    batched with drop_last when ``generator`` is seeded with s + e (several processes).
    """

    def __init__(self, groups: Sequence[int], batch_size: int, generator: torch.Generator,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size <= 0 or num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"need batch_size > 0 and 0 <= rank < num_replicas, got {batch_size}, {rank}, "
                             f"{num_replicas}")
        self.groups = list(groups)
        self.batch_size = batch_size
        self.generator = generator
        self.num_replicas = num_replicas
        self.rank = rank

    def steps_per_group(self) -> dict[int, int]:
        """How many batches each group (exposure count) yields per epoch."""
        step = self.batch_size * self.num_replicas
        return {group: count // step for group, count in sorted(Counter(self.groups).items())}

    def __len__(self) -> int:
        return sum(self.steps_per_group().values())

    def __iter__(self) -> Iterator[list[int]]:
        step = self.batch_size * self.num_replicas
        pending: dict[int, list[int]] = {}
        for index in torch.randperm(len(self.groups), generator=self.generator).tolist():
            bucket = pending.setdefault(self.groups[index], [])
            bucket.append(index)
            if len(bucket) == step:
                yield bucket[self.rank::self.num_replicas]
                bucket.clear()


class EpochSeededBatches(Sampler[list[tuple[int, int, int]]]):
    """The batches of an ``ExposureGroupedBatchSampler`` as (crop, epoch seed, epoch count), for one
    DataLoader kept over the epochs (persistent workers). ``set_epoch`` draws what a DataLoader
    built anew for the epoch would: the workers' base seed from ``generator`` (first, as the
    DataLoader does), the shuffle from ``shuffle``; ``HDRTrainDataset`` reseeds each worker from
    it, so the crops are those of a fresh loader per epoch, bit for bit."""

    def __init__(self, batches: ExposureGroupedBatchSampler) -> None:
        self.batches = batches
        self.seed = 0
        self.epochs = 0

    def set_epoch(self, generator: torch.Generator, shuffle: torch.Generator) -> None:
        self.seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
        self.epochs += 1
        self.batches.generator = shuffle

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.batches:
            yield [(index, self.seed, self.epochs) for index in batch]


def to_network_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch on ``device`` (asynchronously from pinned memory), with the network input made
    there from the LDR codes of an ``encoded`` batch (``network_input_from_codes``)."""
    moved = {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
             for key, value in batch.items()}
    if "ldr_codes" in moved:
        moved["input"] = network_input_from_codes(moved.pop("ldr_codes"), moved.pop("code_tables"),
                                                  moved.pop("exposure_times"))
        moved["segments"] = moved["segments"].long()
    return moved


_PERSISTENT_LOADERS: "weakref.WeakSet[DataLoader]" = weakref.WeakSet()


def crop_loader(dataset: HDRTrainDataset, batch_sampler: EpochSeededBatches, num_workers: int,
                **options: Any) -> DataLoader:
    """The loader of a training run: batches cut straight into batch tensors (``collate_crops``)
    by workers that persist over the epochs (a new epoch only reseeds them) until
    ``end_workers``, or the interpreter's exit."""
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate_crops,
                        persistent_workers=num_workers > 0, **options)
    if num_workers > 0:
        _PERSISTENT_LOADERS.add(loader)
    return loader


def end_workers(loader: DataLoader) -> None:
    """End a loader's persistent workers now (they ignore SIGTERM, which is the training
    process's to handle, so the interpreter's exit could not end them)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    _PERSISTENT_LOADERS.discard(loader)


@atexit.register
def _end_all_workers() -> None:
    for loader in list(_PERSISTENT_LOADERS):
        end_workers(loader)
