"""Scene reading, validation, preprocessing, caching and the two PyTorch datasets."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import datasets.scene as scene_module
from datasets import (
    HDRFullImageDataset,
    HDRTrainDataset,
    NpySceneCache,
    SceneError,
    SceneLayout,
    SceneReader,
    build_network_input,
    list_scenes,
    load_scene,
    read_segments,
    write_segments,
)
from datasets.preprocess import reference_ldr, sample_exposures
from utils.image_io import read_hdr, read_ldr, write_hdr, write_ldr

HEIGHT, WIDTH = 24, 40


def coordinate_scene(scene_dir: Path, exposures: Sequence[float] = (0.0, 2.0, 4.0),
                     size: tuple[int, int] = (HEIGHT, WIDTH), ldr_names: Optional[Sequence[str]] = None,
                     with_masks: bool = True) -> Path:
    """A scene whose pixels encode their own position, so crops and flips can be traced.

    LDR i: red = row / H, green = column / W, blue = (i + 1) / 10. Label: red = 1 + row,
    green = 1 + column (radiance above 1 survives RGBE exactly for these integers). Masks:
    ID = row * W + column.
    """
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    scene_dir.mkdir(parents=True, exist_ok=True)
    names = ldr_names or [f"input_{i + 1}.tif" for i in range(len(exposures))]
    for index, name in enumerate(names):
        ldr = np.stack([rows / height, cols / width, np.full_like(rows, (index + 1) / 10)], axis=2)
        write_ldr(scene_dir / name, ldr)
    (scene_dir / "exposure.txt").write_text("".join(f"{e}\n" for e in exposures))
    write_hdr(scene_dir / "HDRImg.hdr", np.stack([1 + rows, 1 + cols, np.ones_like(rows)], axis=2))
    if with_masks:
        write_segments(scene_dir / "masks.npy", (rows * width + cols).astype(np.int64))
    return scene_dir


@pytest.fixture
def coordinate_dataset(tmp_path: Path) -> Path:
    for name in ("b_scene", "a_scene"):
        coordinate_scene(tmp_path / "data" / "Training" / name)
    coordinate_scene(tmp_path / "data" / "Test" / "t_scene", with_masks=False)
    return tmp_path / "data"


# --- preprocessing ------------------------------------------------------------------------------

def test_build_network_input_follows_the_released_formula():
    rng = np.random.default_rng(0)
    ldrs = [rng.random((4, 5, 3)).astype(np.float32) for _ in range(3)]
    stops = [0.0, 2.0, 4.0]
    x = build_network_input(ldrs, stops)
    assert x.shape == (18, 4, 5) and x.dtype == np.float32
    for i, (ldr, stop) in enumerate(zip(ldrs, stops)):
        np.testing.assert_allclose(x[6 * i:6 * i + 3], np.transpose(ldr**2.2 / 2**stop, (2, 0, 1)), rtol=1e-5)
        np.testing.assert_array_equal(x[6 * i + 3:6 * i + 6], np.transpose(ldr, (2, 0, 1)))


def test_build_network_input_checks_counts():
    with pytest.raises(ValueError, match="2 LDR images but 3 exposure values"):
        build_network_input([np.zeros((2, 2, 3))] * 2, [0, 2, 4])


# --- listing and loading ------------------------------------------------------------------------

def test_list_scenes_is_sorted_and_skips_files_and_hidden_folders(coordinate_dataset):
    (coordinate_dataset / "Training" / "notes.txt").write_text("x")
    (coordinate_dataset / "Training" / ".hidden").mkdir()
    assert [p.name for p in list_scenes(coordinate_dataset, "Training")] == ["a_scene", "b_scene"]


def test_list_scenes_rejects_missing_and_empty_splits(tmp_path):
    with pytest.raises(SceneError, match="split folder not found"):
        list_scenes(tmp_path, "Training")
    (tmp_path / "Training").mkdir()
    with pytest.raises(SceneError, match="no scene folders"):
        list_scenes(tmp_path, "Training")


def test_load_scene_reads_everything_in_order(coordinate_dataset):
    scene_dir = coordinate_dataset / "Training" / "a_scene"
    scene = load_scene(scene_dir, require_masks=True)
    assert scene.name == "a_scene" and scene.size == (HEIGHT, WIDTH) and scene.reference_index == 1
    assert scene.ldrs.shape == (3, HEIGHT, WIDTH, 3) and scene.ldrs.dtype == np.float32
    np.testing.assert_array_equal(scene.exposures, [0, 2, 4])
    for i in range(3):
        np.testing.assert_array_equal(scene.ldrs[i], read_ldr(scene_dir / f"input_{i + 1}.tif"))
    np.testing.assert_array_equal(scene.label, read_hdr(scene_dir / "HDRImg.hdr"))
    assert scene.segments.dtype == np.int64 and scene.segments[3, 5] == 3 * WIDTH + 5


def test_layout_options_subfolder_png_and_file_names(tmp_path):
    scene_dir = tmp_path / "Test" / "s1"
    coordinate_scene(scene_dir / "ldr", ldr_names=["x1.png", "x2.png", "x3.png"], with_masks=False)
    for name, new_name in (("exposure.txt", "exp.txt"), ("HDRImg.hdr", "gt.hdr")):
        shutil.move(scene_dir / "ldr" / name, scene_dir / new_name)
    write_segments(scene_dir / "seg.npy", np.zeros((HEIGHT, WIDTH), dtype=np.int64))
    (scene_dir / "ldr" / "seg.png").write_bytes(b"a preview, never an LDR")
    layout = SceneLayout(ldr_pattern="*.png", ldr_subdir="ldr", exposure_file="exp.txt",
                         label_file="gt.hdr", masks_file="seg.npy")
    scene = load_scene(scene_dir, layout, require_masks=True)
    assert scene.num_exposures == 3 and scene.label is not None and scene.segments is not None
    np.testing.assert_allclose(scene.ldrs[:, 0, 0, 2], [0.1, 0.2, 0.3], atol=1e-4)


def test_masks_preview_is_not_taken_for_an_ldr(tmp_path):
    scene_dir = coordinate_scene(tmp_path / "s", ldr_names=["a.png", "b.png", "c.png"])
    shutil.copy(scene_dir / "a.png", scene_dir / "masks.png")
    assert load_scene(scene_dir, SceneLayout(ldr_pattern="*.png")).num_exposures == 3


def test_label_is_optional_for_inference(tmp_path):
    scene_dir = coordinate_scene(tmp_path / "s")
    (scene_dir / "HDRImg.hdr").unlink()
    assert load_scene(scene_dir, require_label=False).label is None
    with pytest.raises(SceneError, match=r"scene s: label file missing: .*HDRImg.hdr"):
        load_scene(scene_dir)


# --- validation errors --------------------------------------------------------------------------

def _break_missing_exposure(d: Path) -> None:
    (d / "exposure.txt").unlink()


def _break_exposure_count(d: Path) -> None:
    (d / "exposure.txt").write_text("0\n2\n")


def _break_exposure_text(d: Path) -> None:
    (d / "exposure.txt").write_text("0\ntwo\n4\n")


def _break_exposure_order(d: Path) -> None:
    (d / "exposure.txt").write_text("4\n2\n0\n")


def _break_ldr_size(d: Path) -> None:
    write_ldr(d / "input_3.tif", np.zeros((HEIGHT, WIDTH + 1, 3)))


def _break_label_size(d: Path) -> None:
    write_hdr(d / "HDRImg.hdr", np.ones((HEIGHT + 2, WIDTH, 3), dtype=np.float32))


def _break_masks_size(d: Path) -> None:
    write_segments(d / "masks.npy", np.zeros((HEIGHT, WIDTH - 1), dtype=np.int64))


def _break_masks_values(d: Path) -> None:
    np.save(d / "masks.npy", np.full((HEIGHT, WIDTH, 1), 1.5, dtype=np.float32))


def _break_unreadable_ldr(d: Path) -> None:
    (d / "input_2.tif").write_bytes(b"garbage")


def _break_no_ldrs(d: Path) -> None:
    for path in d.glob("*.tif"):
        path.unlink()


@pytest.mark.parametrize("breaker,message", [
    (_break_missing_exposure, r"scene s: exposure file missing: .*exposure.txt"),
    (_break_exposure_count, r"scene s: .*exposure.txt holds 2 exposure values but there are 3 LDR files"),
    (_break_exposure_text, r"scene s: cannot parse exposure file .*exposure.txt"),
    (_break_exposure_order, r"scene s: exposures in .*exposure.txt must be sorted shortest first"),
    (_break_ldr_size, r"scene s: LDR .*input_3.tif is 24×41 but the LDRs are 24×40"),
    (_break_label_size, r"scene s: label .*HDRImg.hdr is 26×40 but the LDRs are 24×40"),
    (_break_masks_size, r"scene s: masks .*masks.npy is 24×39 but the LDRs are 24×40"),
    (_break_masks_values, r"scene s: masks file .*masks.npy must hold integer segment IDs from 0 to 16777215"),
    (_break_unreadable_ldr, r"scene s: cannot decode image file: .*input_2.tif"),
    (_break_no_ldrs, r"scene s: no LDR files matching '\*.tif'"),
])
def test_invalid_scenes_raise_scene_errors_naming_scene_and_file(tmp_path, breaker, message):
    scene_dir = coordinate_scene(tmp_path / "s")
    breaker(scene_dir)
    with pytest.raises(SceneError, match=message):
        load_scene(scene_dir)


@pytest.mark.parametrize("bad_value,message", [(np.nan, "NaN"), (-0.5, "negative")])
def test_label_with_nan_or_negative_values_is_rejected(tmp_path, monkeypatch, bad_value, message):
    # Radiance RGBE cannot store NaN or negative numbers, so the decoded label is altered instead.
    scene_dir = coordinate_scene(tmp_path / "s")

    def corrupted_hdr(path):
        label = read_hdr(path)
        label[2, 3, 1] = bad_value
        return label

    monkeypatch.setattr(scene_module, "read_hdr", corrupted_hdr)
    with pytest.raises(SceneError, match=rf"scene s: label .*HDRImg.hdr contains {message}"):
        load_scene(scene_dir)


def test_required_masks_missing_points_to_the_segmentation_script(coordinate_dataset):
    (coordinate_dataset / "Training" / "b_scene" / "masks.npy").unlink()
    with pytest.raises(SceneError, match=r"scene b_scene: masks file missing: .*segmask/segment.py"):
        HDRTrainDataset(coordinate_dataset, patch_size=8, cache=None)
    assert len(HDRTrainDataset(coordinate_dataset, patch_size=8, with_masks=False, cache=None)) == 200


def test_datasets_check_every_scene_before_use(coordinate_dataset):
    (coordinate_dataset / "Training" / "b_scene" / "exposure.txt").unlink()
    with pytest.raises(SceneError, match="scene b_scene: exposure file missing"):
        HDRTrainDataset(coordinate_dataset, patch_size=8)


# --- training patches ---------------------------------------------------------------------------

def _decode_positions(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """Scene (row, column) of every patch pixel, read from the segment IDs."""
    ids = sample["segments"].numpy()
    return ids // WIDTH, ids % WIDTH


def test_train_sample_has_the_documented_keys_shapes_and_types(coordinate_dataset):
    dataset = HDRTrainDataset(coordinate_dataset, patch_size=16, repeat=3, cache=None)
    assert len(dataset) == 3 * 2
    sample = dataset[0]
    assert set(sample) == {"input", "label", "segments", "scene"}
    assert sample["input"].shape == (18, 16, 16) and sample["input"].dtype == torch.float32
    assert sample["label"].shape == (3, 16, 16) and sample["label"].dtype == torch.float32
    assert sample["segments"].shape == (16, 16) and sample["segments"].dtype == torch.int64
    assert [dataset[i]["scene"] for i in range(4)] == ["a_scene", "b_scene", "a_scene", "b_scene"]


def test_crop_and_flip_are_shared_by_all_exposures_label_and_segments(coordinate_dataset):
    dataset = HDRTrainDataset(coordinate_dataset, patch_size=16, repeat=50, cache="memory")
    torch.manual_seed(0)
    flips = {"none": 0, "vertical": 0, "horizontal": 0}
    corners = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        rows, cols = _decode_positions(sample)
        x, label = sample["input"].numpy(), sample["label"].numpy()
        for i in range(3):  # LDR channels of exposure i: red = row / H, green = column / W
            np.testing.assert_allclose(x[6 * i + 3], rows / HEIGHT, atol=1e-4)
            np.testing.assert_allclose(x[6 * i + 4], cols / WIDTH, atol=1e-4)
            np.testing.assert_allclose(x[6 * i + 5], (i + 1) / 10, atol=1e-4)
            np.testing.assert_allclose(x[6 * i], (rows / HEIGHT) ** 2.2 / 2 ** (2 * i), atol=1e-4)
        np.testing.assert_allclose(label[0], 1 + rows, rtol=0.01)
        np.testing.assert_allclose(label[1], 1 + cols, rtol=0.01)
        # a patch is a contiguous 16×16 window, possibly mirrored along one axis
        row_step, col_step = rows[1, 0] - rows[0, 0], cols[0, 1] - cols[0, 0]
        assert abs(row_step) == 1 and abs(col_step) == 1
        flips["vertical" if row_step < 0 else "horizontal" if col_step < 0 else "none"] += 1
        corners.add((rows.min(), cols.min()))
    assert 30 < flips["none"] < 70 and 12 < flips["vertical"] < 40 and 12 < flips["horizontal"] < 40
    assert len(corners) > 30


def test_training_patches_are_reproducible_under_a_torch_seed(coordinate_dataset):
    dataset = HDRTrainDataset(coordinate_dataset, patch_size=8, repeat=5, cache=None)

    def draw(seed):
        torch.manual_seed(seed)
        return torch.stack([dataset[i]["segments"] for i in range(len(dataset))])

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_dataloader_workers_draw_different_patches(coordinate_dataset):
    dataset = HDRTrainDataset(coordinate_dataset, patch_size=8, repeat=4, cache=None)

    def first_batches(seed):
        torch.manual_seed(seed)
        loader = DataLoader(dataset, batch_size=2, num_workers=2, shuffle=False)
        return [batch["segments"] for _, batch in zip(range(2), loader)]

    batches = first_batches(3)
    # worker 0 yields batch 0 (samples 0, 1), worker 1 batch 1 (samples 2, 3): the same scenes
    assert not torch.equal(batches[0], batches[1])
    assert all(torch.equal(a, b) for a, b in zip(batches, first_batches(3)))


def test_segments_are_zero_without_masks(coordinate_dataset):
    dataset = HDRTrainDataset(coordinate_dataset, patch_size=8, with_masks=False, cache=None)
    assert not dataset[0]["segments"].any()


def test_patch_larger_than_scene_is_an_error(coordinate_dataset):
    dataset = HDRTrainDataset(coordinate_dataset, patch_size=32, cache=None)
    with pytest.raises(SceneError, match="24×40 is smaller than the 32×32 patch"):
        dataset[0]


# --- whole scenes -------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", [None, "npy"])
def test_full_image_dataset_gives_whole_scenes(coordinate_dataset, cache):
    dataset = HDRFullImageDataset(coordinate_dataset, split="Test", cache=cache)
    assert len(dataset) == 1 and dataset.scene_names == ["t_scene"]
    sample = dataset[0]
    assert set(sample) == {"input", "ldrs", "label", "segments", "exposures", "scene"}
    assert sample["scene"] == "t_scene"
    assert sample["input"].shape == (18, HEIGHT, WIDTH) and sample["label"].shape == (3, HEIGHT, WIDTH)
    assert sample["exposures"].dtype == torch.float32 and sample["exposures"].tolist() == [0, 2, 4]
    assert not sample["segments"].any()
    scene = load_scene(coordinate_dataset / "Test" / "t_scene")
    np.testing.assert_array_equal(sample["input"].numpy(), build_network_input(scene.ldrs, scene.exposures))
    # the sample carries the LDRs it was built from (a view of the input, not a copy) and its stops
    assert sample["ldrs"].shape == (3, 3, HEIGHT, WIDTH)
    assert sample["ldrs"].untyped_storage().data_ptr() == sample["input"].untyped_storage().data_ptr()
    ldrs, stops = sample_exposures(sample)
    assert stops == [0.0, 2.0, 4.0]
    for ldr, expected in zip(ldrs, scene.ldrs):
        np.testing.assert_array_equal(ldr, expected)
    np.testing.assert_array_equal(reference_ldr(sample), scene.ldrs[1])


def test_full_image_dataset_with_masks_and_without_labels(coordinate_dataset):
    with_masks = HDRFullImageDataset(coordinate_dataset, split="Training", with_masks=True, cache=None)
    assert with_masks[0]["segments"][2, 3] == 2 * WIDTH + 3
    (coordinate_dataset / "Test" / "t_scene" / "HDRImg.hdr").unlink()
    with pytest.raises(SceneError, match="label file missing"):
        HDRFullImageDataset(coordinate_dataset, split="Test", cache=None)
    inference = HDRFullImageDataset(coordinate_dataset, split="Test", cache=None, require_label=False)
    assert "label" not in inference[0]


def test_works_on_generated_data(synthetic_dataset):
    dataset = HDRTrainDataset(synthetic_dataset, patch_size=32, repeat=2, with_masks=False, cache="npy")
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["input"].shape == (4, 18, 32, 32) and torch.isfinite(batch["input"]).all()
    assert 0 <= float(batch["label"].min()) and float(batch["label"].max()) <= 1


# --- caches -------------------------------------------------------------------------------------

def _touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_invalid_cache_mode_is_rejected():
    with pytest.raises(ValueError, match="cache must be one of"):
        SceneReader(cache="disk")


def test_npy_cache_is_memory_mapped_and_equal_to_a_fresh_decode(coordinate_dataset):
    scene_dir = coordinate_dataset / "Training" / "a_scene"
    reader = SceneReader(cache="npy")
    first = reader.load(scene_dir)
    assert (scene_dir / ".cache" / "manifest.json").is_file()
    second = SceneReader(cache="npy").load(scene_dir)
    assert isinstance(SceneReader(cache="npy").load_coded(scene_dir).codes, np.memmap)  # the LDRs as uint16 codes
    assert isinstance(second.label, np.memmap)
    fresh = load_scene(scene_dir)
    for cached in (first, second):
        np.testing.assert_array_equal(cached.ldrs, fresh.ldrs)
        np.testing.assert_array_equal(cached.label, fresh.label)
        np.testing.assert_array_equal(cached.segments, fresh.segments)
        np.testing.assert_array_equal(cached.exposures, fresh.exposures)


@pytest.mark.parametrize("cache", ["npy", "memory"])
def test_cache_notices_changed_added_and_removed_source_files(coordinate_dataset, cache):
    scene_dir = coordinate_dataset / "Training" / "a_scene"
    reader = SceneReader(cache=cache)
    assert reader.load(scene_dir).label[0, 0, 0] == pytest.approx(1.0)

    write_hdr(scene_dir / "HDRImg.hdr", np.full((HEIGHT, WIDTH, 3), 0.25, dtype=np.float32))
    _touch_later(scene_dir / "HDRImg.hdr")
    assert reader.load(scene_dir).label[0, 0, 0] == pytest.approx(0.25)

    segments = read_segments(scene_dir / "masks.npy")
    (scene_dir / "masks.npy").unlink()
    assert reader.load(scene_dir).segments is None
    with pytest.raises(SceneError, match="masks file missing"):
        reader.load(scene_dir, require_masks=True)
    write_segments(scene_dir / "masks.npy", segments + 7)
    assert reader.load(scene_dir, require_masks=True).segments[0, 0] == 7


def test_npy_cache_validates_before_caching(coordinate_dataset):
    scene_dir = coordinate_dataset / "Training" / "a_scene"
    (scene_dir / "input_2.tif").write_bytes(b"garbage")
    with pytest.raises(SceneError, match="input_2.tif"):
        SceneReader(cache="npy").load(scene_dir)
    assert not (scene_dir / ".cache" / "manifest.json").exists()


def test_unwritable_npy_cache_falls_back_to_decoding(coordinate_dataset, monkeypatch):
    def refuse(self, scene, signature):
        raise PermissionError("read-only")

    monkeypatch.setattr(NpySceneCache, "_write", refuse)
    reader = SceneReader(cache="npy")
    with pytest.warns(UserWarning, match="cannot write the scene cache"):
        scene = reader.load(coordinate_dataset / "Training" / "a_scene")
    assert scene.ldrs.shape == (3, HEIGHT, WIDTH, 3)
