"""Training-crop input pipeline: samples per second of the released reader, of the project's
reader before its crops became LDR codes, and of the project's reader now, side by side.

    python -m benchmarks.bench_loader                        # 4 scenes of 1000×1500, 128² crops, batch 8
    python -m benchmarks.bench_loader --workers 1 2          # also through 1 and 2 loader worker processes
    python -m benchmarks.bench_loader --keep_freed_memory    # malloc as the CPU trainer sets it (utils/cpu_memory.py)

Scenes in the Kalantari layout are written to a temporary folder (random 16-bit TIFFs, a label,
a segment map of 100×100 blocks), then every reader draws batches of 8 crops of 3 exposures with
segment maps through a DataLoader in this one process, reader after reader, round after round,
so that all meet the same moments of a machine whose speed drifts; each figure is the median
over the rounds, each ratio the median of the per-round ratios against the released in-memory
reader. The readers:

- ``released_memory``, ``released_pickle``: a transcription of the released reader
  (docs in ../shared/spec/DATA.md, "The released training reader"): scenes in memory as float32
  (``--cache_choice 2``) or unpickled from a file per sample (its default, ``--cache_choice 1``);
  crop with Python's ``random``, ``cv2.flip`` per image, ``ldr ** 2.2 / (t + 1e-8)`` concatenated
  with the LDR, float32 transposes, one tensor per exposure.
- ``before_npy``, ``before_memory``: the project's reader before this change (a copy of its
  per-sample path): every sample checks the scene's files, reads the cache manifest and opens four
  memory maps of float32 arrays, and builds the float32 input in the loader.
- ``project_npy``, ``project_memory``: ``HDRTrainDataset(encoded=True)``, what the trainer reads:
  scenes opened once per epoch, crops of the uint16 codes; the input is made on the training device.
- ``project_npy_input_on_cpu``: the same plus ``to_network_batch`` on the CPU (the lookup the
  device does, here on the host: what training on the CPU pays).
- ``project_npy_host_input``: ``HDRTrainDataset(encoded=False)``: the float32 input made by
  lookup in the loader (the lever of the codes alone, without moving the lookup to the device).
- ``project_npy_reopen``: ``project_npy`` opening the scene's cache for every sample (the lever
  of opening once).
"""
from __future__ import annotations

import argparse
import json
import pickle
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import describe_machine
from datasets.cache import source_signature
from datasets.hdr_dataset import (
    EpochSeededBatches,
    ExposureGroupedBatchSampler,
    HDRTrainDataset,
    collate_crops,
    crop_loader,
    end_workers,
    release_batch,
    to_network_batch,
)
from datasets.preprocess import build_network_input, random_crop_box, random_flip_axis
from datasets.scene import Scene, list_scenes, load_scene, write_segments
from utils.atomic_io import save_npy_atomically, write_text_atomically
from utils.cpu_memory import keep_freed_memory
from utils.image_io import write_hdr

EXPOSURES = (0.0, 2.0, 4.0)


# ----------------------------------------------------------------------------- data


def write_scenes(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``count`` Kalantari-layout training scenes under ``root/Training``: three random 16-bit
    TIFFs, exposure.txt, HDRImg.hdr and masks.npy (100×100 blocks, IDs unique over the split)."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    blocks = (rows // 100) * (width // 100 + 1) + cols // 100
    for index in range(count):
        scene = root / "Training" / f"scene_{index + 1:03d}"
        scene.mkdir(parents=True, exist_ok=True)
        for frame in range(len(EXPOSURES)):
            cv2.imwrite(str(scene / f"input_{frame + 1}.tif"), rng.integers(0, 2**16, (height, width, 3), np.uint16))
        (scene / "exposure.txt").write_text("".join(f"{e:g}\n" for e in EXPOSURES))
        write_hdr(scene / "HDRImg.hdr", rng.random((height, width, 3), dtype=np.float32))
        write_segments(scene / "masks.npy", blocks + index * (int(blocks.max()) + 1))
    return root


# ----------------------------------------------------------------------------- the released reader


def released_scene(scene: Scene) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """A scene as the released reader holds it: LDRs float32 (already divided by 2**16), the label,
    the segment map H×W×1 float32 and the exposure times (2**stop, float64)."""
    return [np.asarray(ldr, dtype=np.float32) for ldr in scene.ldrs], np.asarray(scene.label, dtype=np.float32), \
        np.asarray(scene.segments, dtype=np.float32)[..., None], 2.0 ** np.asarray(scene.exposures, dtype=np.float64)


class ReleasedTrainSet(Dataset):
    """The released training reader, in memory (``--cache_choice 2``) or unpickling the scene for
    every sample (``--cache_choice 1``, its default: ``pickles`` given)."""

    def __init__(self, scenes: list[tuple], patch_size: int, repeat: int, pickles: Optional[list[Path]] = None):
        self.scenes = scenes
        self.pickles = pickles
        self.patch_size = patch_size
        self.repeat = repeat

    def __len__(self) -> int:
        return self.repeat * len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index %= len(self.scenes)
        if self.pickles is not None:
            with open(self.pickles[index], "rb") as handle:
                ldrs, label, segmap, times = pickle.load(handle)
        else:
            ldrs, label, segmap, times = self.scenes[index]
        p = self.patch_size
        height, width = label.shape[:2]
        x, y = random.randint(0, height - p), random.randint(0, width - p)
        ldrs = [ldr[x:x + p, y:y + p] for ldr in ldrs]
        label, segmap = label[x:x + p, y:y + p], segmap[x:x + p, y:y + p]
        if random.random() < 0.5:
            code = 0 if random.random() < 0.5 else 1
            ldrs = [cv2.flip(ldr, code) for ldr in ldrs]
            label, segmap = cv2.flip(label, code), cv2.flip(segmap, code).reshape(p, p, 1)
        inputs = [torch.from_numpy(np.concatenate((ldr ** 2.2 / (t + 1e-8), ldr), axis=2).astype(np.float32)
                                   .transpose(2, 0, 1)) for ldr, t in zip(ldrs, times)]
        return {"input": inputs, "label": torch.from_numpy(label.astype(np.float32).transpose(2, 0, 1)),
                "mask": torch.from_numpy(segmap.astype(np.float32).transpose(2, 0, 1))}


# ----------------------------------------------------------------------------- the project's reader before


class BeforeTrainSet(Dataset):
    """A copy of the project's training reader before its crops became codes: float32 scenes in
    a cache of its own (``.cache_before``, the old format) or in memory; every sample checks the
    source files, and from the npy cache reads the manifest and opens four memory maps."""

    ARRAYS = ("ldrs", "exposures", "label", "segments")

    def __init__(self, dataset_dir: Path, patch_size: int, repeat: int, cache: str):
        self.scene_dirs = list_scenes(dataset_dir, "Training")
        self.patch_size = patch_size
        self.repeat = repeat
        self.cache = cache
        self.memory: dict[Path, tuple[list, Scene]] = {}
        if cache == "npy":
            for scene_dir in self.scene_dirs:
                self._write(load_scene(scene_dir, require_masks=True), source_signature(scene_dir))

    def __len__(self) -> int:
        return self.repeat * len(self.scene_dirs)

    def _write(self, scene: Scene, signature: list) -> None:
        folder = scene.path / ".cache_before"
        folder.mkdir(exist_ok=True)
        for name in self.ARRAYS:
            save_npy_atomically(folder / f"{name}.npy", getattr(scene, name))
        write_text_atomically(folder / "manifest.json",
                              json.dumps({"version": 2, "sources": signature, "arrays": list(self.ARRAYS)}))

    def _load(self, scene_dir: Path) -> Scene:
        signature = source_signature(scene_dir)
        if self.cache == "memory":
            entry = self.memory.get(scene_dir)
            if entry is None or entry[0] != signature:
                entry = self.memory[scene_dir] = (signature, load_scene(scene_dir, require_masks=True))
            return entry[1]
        folder = scene_dir / ".cache_before"
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("version") != 2 or manifest.get("sources") != signature:
            raise RuntimeError(f"{folder} is stale")
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                  for name in manifest["arrays"]}
        return Scene(name=scene_dir.name, path=scene_dir, ldrs=arrays["ldrs"], exposures=np.array(arrays["exposures"]),
                     label=arrays.get("label"), segments=arrays.get("segments"))

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self._load(self.scene_dirs[index % len(self.scene_dirs)])
        p = self.patch_size
        top, left = random_crop_box(scene.size, p)
        window = (slice(top, top + p), slice(left, left + p))
        ldrs = scene.ldrs[:, window[0], window[1]]
        label = scene.label[window]
        segments = np.asarray(scene.segments, dtype=np.int64)[window]
        axis = random_flip_axis()
        if axis is not None:
            ldrs = np.flip(ldrs, axis=axis + 1)
            label = np.flip(label, axis=axis)
            segments = np.flip(segments, axis=axis)

        def tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.array(array, order="C", copy=True)).to(dtype)

        return {"input": tensor(build_network_input(ldrs, scene.exposures), torch.float32),
                "label": tensor(np.transpose(label, (2, 0, 1)), torch.float32),
                "segments": tensor(segments, torch.int64), "scene": scene.name}


class ReopeningTrainSet(HDRTrainDataset):
    """``HDRTrainDataset`` opening the scene's cache for every sample (as if never kept open)."""

    def coded_scene(self, index: int):
        self._open.clear()
        return super().coded_scene(index)


# ----------------------------------------------------------------------------- timing


class Reader:
    """One reader's endless stream of batches and the samples it has drawn per timed round."""

    def __init__(self, name: str, dataset: Dataset, batch_size: int, batches_per_round: int,
                 after: Callable[[Any], Any] = lambda batch: batch) -> None:
        collate = collate_crops if isinstance(dataset, HDRTrainDataset) else None  # as the trainer's loader
        self.name = name
        self.batches_per_round = batches_per_round
        self.batch_size = batch_size
        self.after = after
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0,
                                 collate_fn=collate)
        self.stream = self._forever()
        self.rates: list[float] = []

    def _forever(self) -> Iterator[Any]:
        while True:
            yield from self.loader

    def draw(self, batches: int) -> float:
        start = time.perf_counter()
        for _ in range(batches):
            self.after(next(self.stream))
        return time.perf_counter() - start

    def timed_round(self) -> None:
        self.rates.append(self.batches_per_round * self.batch_size / self.draw(self.batches_per_round))


def time_in_turn(readers: list[Reader], rounds: int) -> None:
    """Every reader's round in turn (the order rotating), ``rounds`` times, after one warm-up round."""
    for reader in readers:
        reader.draw(reader.batches_per_round)
    for round_index in range(rounds):
        shift = round_index % len(readers)
        for reader in readers[shift:] + readers[:shift]:
            reader.timed_round()


def worker_throughput(dataset: Dataset, batch_size: int, workers: int, batches: int) -> float:
    """Samples per second drawn through ``workers`` persistent worker processes: the project's
    reader through the trainer's loader (``crop_loader``; each batch given back once read, as the
    trainer gives it back after its step), the others through a plain DataLoader."""
    if isinstance(dataset, HDRTrainDataset):
        sampler = EpochSeededBatches(ExposureGroupedBatchSampler(dataset.crop_exposure_counts(), batch_size,
                                                                 torch.Generator()))
        sampler.set_epoch(torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))
        loader = crop_loader(dataset, sampler, workers)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                            persistent_workers=workers > 0)
    stream = iter(loader)
    for _ in range(2 * max(workers, 1)):
        release_batch(next(stream))
    start = time.perf_counter()
    for _ in range(batches):
        release_batch(next(stream))
    seconds = time.perf_counter() - start
    del stream
    if isinstance(dataset, HDRTrainDataset):
        end_workers(loader)
    return batches * batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(1000, 1500), metavar=("H", "W"))
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="batches per reader per round (the pickle reader 2)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="*", default=[],
                        help="also the encoded loader's samples/s with these numbers of worker processes")
    parser.add_argument("--data", type=Path, default=None, help="scene folder to use (default: a temporary one)")
    parser.add_argument("--keep_freed_memory", action="store_true",
                        help="let malloc keep freed memory, as the trainer does on the CPU (not on a GPU)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one loader process does its own work single-threaded, as a worker does
    if args.keep_freed_memory:
        keep_freed_memory()

    with tempfile.TemporaryDirectory() as temporary:
        root = args.data or write_scenes(Path(temporary), args.scenes, tuple(args.size))
        decoded = [load_scene(d, require_masks=True) for d in list_scenes(root, "Training")]
        in_memory = [released_scene(scene) for scene in decoded]
        pickles = []
        for scene, held in zip(decoded, in_memory):
            path = Path(temporary) / f"{scene.name}.pkl"
            path.write_bytes(pickle.dumps(held))
            pickles.append(path)
        del decoded
        repeat, p, b, n = 1000, args.patch, args.batch, args.batches

        def project(cache: str, kind: type = HDRTrainDataset, encoded: bool = True, crops: int = repeat
                    ) -> HDRTrainDataset:
            return kind(root, "Training", p, crops, with_masks=True, cache=cache, encoded=encoded)

        def on_cpu(batch: dict) -> dict:
            return to_network_batch(batch, torch.device("cpu"))

        readers = [
            Reader("released_memory", ReleasedTrainSet(in_memory, p, repeat), b, n),
            Reader("released_pickle", ReleasedTrainSet(in_memory, p, repeat, pickles), b, 2),
            Reader("before_npy", BeforeTrainSet(root, p, repeat, "npy"), b, n),
            Reader("before_memory", BeforeTrainSet(root, p, repeat, "memory"), b, n),
            Reader("project_npy", project("npy"), b, n),
            Reader("project_memory", project("memory"), b, n),
            Reader("project_npy_input_on_cpu", project("npy"), b, n, after=on_cpu),
            Reader("project_npy_host_input", project("npy", encoded=False), b, n),
            Reader("project_npy_reopen", project("npy", ReopeningTrainSet), b, n),
        ]
        time_in_turn(readers, args.rounds)
        base = readers[0].rates
        malloc = "malloc keeping freed memory" if args.keep_freed_memory else "default malloc"
        print(f"machine: {describe_machine(torch.device('cpu'))}, {malloc}; {len(in_memory)} scenes of "
              f"{args.size[0]}×{args.size[1]}, {p}² crops of {len(EXPOSURES)} exposures with segment maps, "
              f"batch {b}, "
              f"one process, {args.rounds} rounds")
        print(f"{'reader':28s} {'samples/s':>10s} {'× released_memory':>18s}")
        for reader in readers:
            ratio = statistics.median(r / q for r, q in zip(reader.rates, base))
            print(f"{reader.name:28s} {statistics.median(reader.rates):10.0f} {ratio:18.2f}")
        for workers in args.workers:
            crops = 50 * n * b
            for name, dataset in (("released_memory", ReleasedTrainSet(in_memory, p, crops)),
                                  ("project_npy", project("npy", crops=crops))):
                rate = worker_throughput(dataset, b, workers, 10 * n)
                print(f"{name} through {workers} worker process(es): {rate:.0f} samples/s")


if __name__ == "__main__":
    main()
