"""The fast training-crop path gives the trainer exactly what the float32 path gave it.

The reference below is the training reader as it was before the crops became LDR codes: float32
scenes decoded by ``load_scene``, the crop and flip drawn with torch's RNG, ``build_network_input``
on the crop, a DataLoader built anew for every epoch. The trainer's steps must see the same
network input (to float32 rounding), label and segments for the same seed, with and without
loader workers, over two epochs (persistent workers reseeded per epoch), for 16-bit files and
for 8-bit ones (divided by 255, or by 2**16 with ``--released_8bit_scaling``); whole scenes read
from the cache's codes must be those decoded from the files."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.cache import SceneReader
from datasets.hdr_dataset import (
    EpochSeededBatches,
    ExposureGroupedBatchSampler,
    HDRFullImageDataset,
    HDRTrainDataset,
    collate_crops,
    crop_loader,
    end_workers,
    flip_in_place,
    release_batch,
    to_network_batch,
)
from datasets.preprocess import build_network_input, random_crop_box, random_flip_axis
from datasets.scene import SceneLayout, list_scenes, load_scene
from datasets.synthetic import make_dataset
from segmask.segment import segment_split, superpixel_masks
from training import trainer as trainer_module
from training.options import parse_args
from training.resume import epoch_seed, seed_everything
from utils.image_io import read_ldr, write_ldr

RUN = ["--preset", "tiny", "--train_patch_size", "32", "--batch_size", "2", "--repeat", "3", "--no_progress",
       "--test_path", "none", "--embed_dim", "12", "--depths", "1", "1", "--num_heads", "2", "2",
       "--phase1_epochs", "2", "--epochs", "2", "--metric_guided_interval", "100", "--seed", "11", "--device", "cpu"]
"""Two phase-1 epochs of 3 scenes × repeat 3 / batch 2 = 4 steps; no drop-path, no guided update:
nothing but the crops draws from torch's RNG in the training process."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("paths") / "data", num_train=3, num_test=0, size=(48, 64), seed=8)
    segment_split(root, "Training", lambda image: superpixel_masks(image, n_segments=8), min_area=10, progress=False)
    return root


@pytest.fixture(scope="module")
def eight_bit_dataset(dataset, tmp_path_factory) -> Path:
    """``dataset`` with its LDRs as 8-bit PNGs."""
    root = Path(shutil.copytree(dataset, tmp_path_factory.mktemp("paths8") / "data"))
    for tif in root.glob("Training/*/*.tif"):
        write_ldr(tif.with_suffix(".png"), read_ldr(tif), bit_depth=8)
        tif.unlink()
    return root


class ReferenceTrainSet(Dataset):
    """The training reader before the codes: float32 scenes, ``build_network_input`` per crop."""

    def __init__(self, root: Path, patch_size: int, repeat: int, layout: SceneLayout):
        self.scenes = [load_scene(d, layout, require_masks=True) for d in list_scenes(root, "Training")]
        self.patch_size = patch_size
        self.repeat = repeat

    def __len__(self) -> int:
        return self.repeat * len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scenes[index % len(self.scenes)]
        p = self.patch_size
        top, left = random_crop_box(scene.size, p)
        window = (slice(top, top + p), slice(left, left + p))
        ldrs, label, segments = scene.ldrs[:, window[0], window[1]], scene.label[window], scene.segments[window]
        axis = random_flip_axis()
        if axis is not None:
            ldrs, label, segments = np.flip(ldrs, axis + 1), np.flip(label, axis), np.flip(segments, axis)
        return {"input": torch.from_numpy(build_network_input(ldrs, scene.exposures)),
                "label": torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1))),
                "segments": torch.from_numpy(np.ascontiguousarray(segments)), "scene": scene.name}


def reference_batches(root: Path, args: Any, layout: SceneLayout, epoch: int) -> list[dict]:
    """The batches of one epoch as the trainer's loader drew them before (a new loader per epoch)."""
    reference = ReferenceTrainSet(root, args.train_patch_size, args.repeat, layout)
    generator = torch.Generator().manual_seed(epoch_seed(args.seed, epoch))
    batches = ExposureGroupedBatchSampler([3] * len(reference), args.batch_size, generator)
    seed_everything(epoch_seed(args.seed, epoch, 0))  # as train_epoch does before drawing
    loader = DataLoader(reference, batch_sampler=batches, num_workers=args.num_workers, generator=generator)
    return list(loader)


def trainer_batches(root: Path, logdir: Path, extra: list[str], monkeypatch) -> tuple[list[dict], Any]:
    """Every batch the trainer's steps receive (on its device, after ``to_network_batch``)."""
    seen: list[dict] = []
    real_step = trainer_module.training_step

    def recording_step(model, batch, *args, **kwargs):
        seen.append({key: batch[key].clone() for key in ("input", "label", "segments")})
        return real_step(model, batch, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_step", recording_step)
    args = parse_args(1, ["--dataset_dir", str(root), "--logdir", str(logdir), *RUN, *extra])
    trainer_module.Trainer(args).run()
    return seen, args


def assert_same_batches(new: list[dict], old: list[dict]) -> None:
    assert len(new) == len(old)
    for ours, theirs in zip(new, old):
        torch.testing.assert_close(ours["input"], theirs["input"], rtol=2**-23, atol=0)  # float32 rounding
        assert torch.equal(ours["label"], theirs["label"])
        assert torch.equal(ours["segments"], theirs["segments"]) and ours["segments"].dtype == torch.int64


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_trainer_sees_the_inputs_of_the_float32_path(dataset, tmp_path, monkeypatch, workers):
    seen, args = trainer_batches(dataset, tmp_path / "run", ["--num_workers", workers], monkeypatch)
    steps = len(seen) // 2
    for epoch in (1, 2):
        expected = reference_batches(dataset, args, SceneLayout(), epoch)
        assert_same_batches(seen[(epoch - 1) * steps:epoch * steps], expected)


@pytest.mark.parametrize("released", [False, True], ids=["8-bit-by-255", "8-bit-released-by-2^16"])
def test_eight_bit_files_read_as_before(eight_bit_dataset, tmp_path, monkeypatch, released):
    extra = ["--num_workers", "0", "--ldr_pattern", "*.png"] + (["--released_8bit_scaling"] if released else [])
    layout = SceneLayout(ldr_pattern="*.png", released_8bit_scaling=released)
    seen, args = trainer_batches(eight_bit_dataset, tmp_path / "run", extra, monkeypatch)
    assert_same_batches(seen[:len(seen) // 2], reference_batches(eight_bit_dataset, args, layout, 1))
    top = float(max(batch["input"][:, 3:6].max() for batch in seen))
    assert (top <= 255 / 2**16) if released else (top > 0.5)


def test_a_plain_sample_is_the_float32_paths_sample(dataset):
    """Without ``encoded`` a sample holds the float32 input as before (evaluation tools, tests)."""
    codes = HDRTrainDataset(dataset, patch_size=16, repeat=4, cache="memory")
    reference = ReferenceTrainSet(dataset, 16, 4, SceneLayout())
    for index in range(len(codes)):
        torch.manual_seed(index)
        ours = codes[index]
        torch.manual_seed(index)
        theirs = reference[index]
        assert torch.equal(ours["input"], theirs["input"]) and torch.equal(ours["label"], theirs["label"])
        assert torch.equal(ours["segments"], theirs["segments"])


def test_encoded_batches_are_a_quarter_of_the_input_bytes(dataset):
    train = HDRTrainDataset(dataset, patch_size=32, repeat=4, cache="npy", encoded=True)
    batch = next(iter(DataLoader(train, batch_size=4, collate_fn=collate_crops)))
    assert batch["ldr_codes"].dtype == torch.uint16 and batch["ldr_codes"].shape == (4, 3, 3, 32, 32)
    assert batch["segments"].dtype == torch.int32
    network = to_network_batch(batch, torch.device("cpu"))
    assert network["input"].shape == (4, 18, 32, 32) and network["segments"].dtype == torch.int64
    assert batch["ldr_codes"].nbytes * 4 == network["input"].nbytes


def test_scenes_are_opened_once_per_epoch_and_rechecked_each_epoch(dataset, monkeypatch):
    train = HDRTrainDataset(dataset, patch_size=16, repeat=4, cache="npy", encoded=True)
    opened: list[Path] = []
    real_load = SceneReader.load_coded

    def counting_load(self, scene_dir, *args, **kwargs):
        opened.append(Path(scene_dir))
        return real_load(self, scene_dir, *args, **kwargs)

    monkeypatch.setattr(SceneReader, "load_coded", counting_load)
    batches = EpochSeededBatches(ExposureGroupedBatchSampler(train.crop_exposure_counts(), 2, torch.Generator()))
    loader = DataLoader(train, batch_sampler=batches, collate_fn=collate_crops)
    for epoch in range(2):
        batches.set_epoch(torch.Generator().manual_seed(epoch), torch.Generator().manual_seed(epoch))
        assert len(list(loader)) == 6
        assert len(opened) == 3 * (epoch + 1)  # 3 scenes × 4 crops: each scene opened once this epoch


def test_a_pickled_dataset_leaves_its_open_scenes_behind(dataset):
    """A worker started by spawn gets the dataset pickled: memory maps would travel as whole arrays."""
    train = HDRTrainDataset(dataset, patch_size=16, repeat=4, cache="memory", encoded=True)
    empty = len(pickle.dumps(train))
    for index in range(len(train)):
        train[index]
    assert len(pickle.dumps(train)) < empty + 1000


@pytest.mark.parametrize("axis", [0, 1])
def test_flip_in_place_flips_every_plane(axis):
    array = np.random.default_rng(0).integers(0, 2**16, (2, 3, 5, 5), dtype=np.uint16)
    expected = np.flip(array, axis=axis - 2).copy()
    flip_in_place(array, axis)
    assert np.array_equal(array, expected)


def test_a_workers_buffer_is_written_again_only_once_given_back(dataset):
    """Batches from a worker lie in buffers it lends; one never given back stays as it came, and
    giving them back (as the trainer does after each step) changes no batch."""
    train = HDRTrainDataset(dataset, patch_size=16, repeat=40, cache="npy", encoded=True)
    batches = EpochSeededBatches(ExposureGroupedBatchSampler(train.crop_exposure_counts(), 2, torch.Generator()))
    loader = crop_loader(train, batches, num_workers=1)
    try:
        epochs = []
        for release in (False, True):
            batches.set_epoch(torch.Generator().manual_seed(3), torch.Generator().manual_seed(3))
            kept, copies = [], []
            for batch in loader:  # 60 batches: several times the worker's ring of buffers
                kept.append(batch)
                copies.append({key: batch[key].clone() for key in ("ldr_codes", "label", "segments")})
                if release:
                    release_batch(batch)
            if not release:
                for batch, copy in zip(kept, copies):
                    assert all(torch.equal(batch[key], value) for key, value in copy.items())
            epochs.append(copies)
        for first, second in zip(*epochs):  # the same seeds: the same crops, buffers reused or not
            assert all(torch.equal(first[key], second[key]) for key in first)
    finally:
        end_workers(loader)


@pytest.mark.parametrize("cache", ["npy", "memory"])
@pytest.mark.parametrize("eight_bit", [False, True])
def test_whole_scenes_from_the_cache_are_the_decoded_ones(dataset, eight_bit_dataset, cache, eight_bit):
    root, layout = (eight_bit_dataset, SceneLayout(ldr_pattern="*.png")) if eight_bit else (dataset, SceneLayout())
    cached = HDRFullImageDataset(root, "Training", with_masks=True, cache=cache, layout=layout)
    decoded = HDRFullImageDataset(root, "Training", with_masks=True, cache=None, layout=layout)
    for index in range(len(decoded)):
        ours, theirs = cached[index], decoded[index]
        assert set(ours) == set(theirs)
        for key in ("input", "label", "segments", "exposures"):
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
