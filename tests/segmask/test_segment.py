"""Semantic masks: painting and ID rules, the split loop, the CLI and the real SAM code path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import SceneLayout, list_scenes, read_segments
from segmask.segment import (
    RELEASED_GENERATOR_SETTINGS,
    SamCheckpointError,
    SamMaskProposer,
    SegmentIdError,
    build_sam,
    build_tiny_sam,
    main,
    no_masks,
    paint_masks,
    segment_colours,
    segment_split,
    superpixel_masks,
)
from utils.image_io import read_ldr_uint8

REPO_ROOT = Path(__file__).resolve().parents[2]


def rect_mask(shape, top, left, bottom, right, area=None):
    segmentation = np.zeros(shape, dtype=bool)
    segmentation[top:bottom, left:right] = True
    record = {"segmentation": segmentation}
    if area is not None:
        record["area"] = area
    return record


def split_ids(dataset_dir: Path, split: str = "Training") -> list[np.ndarray]:
    return [read_segments(p / "masks.npy") for p in list_scenes(dataset_dir, split)]


# --- painting and numbering ---------------------------------------------------------------------

def test_smaller_masks_are_painted_over_larger_ones_whatever_the_input_order():
    shape = (10, 10)
    small = rect_mask(shape, 2, 2, 5, 5)  # 9 px, inside the large one
    large = rect_mask(shape, 0, 0, 8, 8)  # 64 px
    for masks in ([small, large], [large, small]):
        ids, next_id = paint_masks(masks, shape, start_id=0, min_area=1)
        assert ids[0, 9] == 0  # background
        assert ids[0, 0] == 1  # the large mask, painted first
        assert ids[3, 3] == 2  # the small mask wins where they overlap
        assert next_id == 3


def test_record_area_sets_the_painting_order():
    shape = (6, 6)
    claims_largest = rect_mask(shape, 0, 0, 2, 6, area=100)  # 12 px
    claims_smallest = rect_mask(shape, 0, 0, 6, 3, area=5)  # 18 px
    ids, _ = paint_masks([claims_smallest, claims_largest], shape, start_id=0, min_area=1)
    assert ids[5, 5] == 0 and ids[0, 5] == 1
    assert ids[0, 0] == 2  # painted last by its recorded area, although it has more pixels


def test_small_segments_fall_back_to_background_and_ids_stay_consecutive():
    shape = (40, 40)
    masks = [
        rect_mask(shape, 0, 0, 20, 40),  # 800 px, kept
        rect_mask(shape, 20, 0, 22, 10),  # 20 px, too small
        rect_mask(shape, 25, 0, 40, 20),  # 300 px, kept
        rect_mask(shape, 0, 0, 20, 5),  # 100 px painted over the first one, kept
        rect_mask(shape, 30, 30, 35, 35),  # 25 px, too small
    ]
    ids, next_id = paint_masks(masks, shape, start_id=10, min_area=50)
    assert set(np.unique(ids)) == {10, 11, 12, 13}  # background and three kept segments
    assert next_id == 14
    assert ids[21, 5] == 10 and ids[32, 32] == 10  # small segments became background
    assert ids[10, 30] == 11 and ids[30, 5] == 12 and ids[10, 2] == 13
    assert np.count_nonzero(ids == 11) == 700  # the first mask loses the pixels painted over it


def test_segment_visible_below_min_area_after_overlap_falls_back():
    shape = (20, 20)
    big = rect_mask(shape, 0, 0, 10, 10)  # 100 px, 90 of them then covered
    cover = rect_mask(shape, 0, 0, 9, 10)  # 90 px
    ids, next_id = paint_masks([big, cover], shape, start_id=0, min_area=50)
    assert ids[9, 0] == 0 and ids[0, 0] == 1 and next_id == 2


def test_no_masks_gives_one_background_segment():
    ids, next_id = paint_masks([], (5, 7), start_id=42)
    assert ids.dtype == np.int64 and ids.shape == (5, 7)
    assert (ids == 42).all() and next_id == 43


def test_background_id_is_skipped_when_masks_cover_everything():
    shape = (4, 4)
    ids, next_id = paint_masks([rect_mask(shape, 0, 0, 4, 4)], shape, start_id=3, min_area=1)
    assert (ids == 3).all() and next_id == 4


def test_mask_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        paint_masks([rect_mask((4, 5), 0, 0, 2, 2)], (5, 4), start_id=0)


def test_preview_colours_are_fixed_per_id():
    ids = np.array([[0, 1], [2, 1]])
    preview = segment_colours(ids)
    assert preview.dtype == np.uint8 and preview.shape == (2, 2, 3)
    np.testing.assert_array_equal(preview[0, 1], preview[1, 1])
    assert not np.array_equal(preview[0, 0], preview[1, 0])
    np.testing.assert_array_equal(segment_colours(np.array([[2]]))[0, 0], preview[1, 0])


# --- whole splits -------------------------------------------------------------------------------

def superpixels(image):
    return superpixel_masks(image, n_segments=16)


def test_superpixel_split_has_unique_consecutive_ids_in_scene_order(synthetic_dataset):
    next_id = segment_split(synthetic_dataset, "Training", superpixels, min_area=100, progress=False)
    all_ids = split_ids(synthetic_dataset)
    expected_start = 0
    for ids in all_ids:
        present = np.unique(ids)
        assert len(present) > 3
        np.testing.assert_array_equal(present, np.arange(expected_start, expected_start + len(present)))
        expected_start += len(present)
    assert next_id == expected_start

    scene_dir = list_scenes(synthetic_dataset, "Training")[0]
    raw = np.load(scene_dir / "masks.npy")
    assert raw.dtype == np.float32 and raw.shape == (64, 80, 1)
    preview = read_ldr_uint8(scene_dir / "masks.png")
    assert preview.shape == (64, 80, 3) and len(np.unique(preview.reshape(-1, 3), axis=0)) > 3


def test_rerun_skips_existing_masks_and_continues_the_numbering(synthetic_dataset):
    segment_split(synthetic_dataset, "Training", superpixels, min_area=100, progress=False)
    complete = split_ids(synthetic_dataset)
    scenes = list_scenes(synthetic_dataset, "Training")
    (scenes[-1] / "masks.npy").unlink()  # an interrupted run
    kept_mtime = (scenes[0] / "masks.npy").stat().st_mtime_ns

    def must_not_run(image):
        raise AssertionError("existing masks must be skipped")

    segment_split(synthetic_dataset, "Training", superpixels, min_area=100, progress=False)
    for before, after in zip(complete, split_ids(synthetic_dataset)):
        np.testing.assert_array_equal(before, after)
    assert (scenes[0] / "masks.npy").stat().st_mtime_ns == kept_mtime
    segment_split(synthetic_dataset, "Training", must_not_run, progress=False)  # nothing left to do


def test_overwrite_recomputes_deterministically(synthetic_dataset):
    segment_split(synthetic_dataset, "Training", superpixels, min_area=100, progress=False)
    first = split_ids(synthetic_dataset)
    segment_split(synthetic_dataset, "Training", no_masks, overwrite=True, progress=False)
    assert [int(np.unique(ids)[0]) for ids in split_ids(synthetic_dataset)] == [0, 1, 2]
    segment_split(synthetic_dataset, "Training", superpixels, overwrite=True, min_area=100, progress=False)
    for before, after in zip(first, split_ids(synthetic_dataset)):
        np.testing.assert_array_equal(before, after)


def test_random_mode_gives_each_scene_its_own_single_id(synthetic_dataset):
    assert segment_split(synthetic_dataset, "Test", no_masks, progress=False) == 2
    assert [np.unique(ids).tolist() for ids in split_ids(synthetic_dataset, "Test")] == [[0], [1]]


def test_shared_ids_between_scenes_are_detected(synthetic_dataset):
    segment_split(synthetic_dataset, "Training", no_masks, progress=False)  # IDs 0, 1, 2
    scenes = list_scenes(synthetic_dataset, "Training")
    (scenes[1] / "masks.npy").unlink()
    with pytest.raises(SegmentIdError, match="--overwrite"):
        # scene 2 now starts at ID 1 and gets several IDs, reaching scene 3's ID 2
        segment_split(synthetic_dataset, "Training", superpixels, min_area=100, progress=False)


def test_layout_options_are_honoured(synthetic_dataset):
    layout = SceneLayout(masks_file="segments.npy")
    segment_split(synthetic_dataset, "Test", no_masks, layout=layout, progress=False)
    scene_dir = list_scenes(synthetic_dataset, "Test")[0]
    assert (scene_dir / "segments.npy").is_file() and (scene_dir / "segments.png").is_file()
    assert not (scene_dir / "masks.npy").exists()


# --- command line -------------------------------------------------------------------------------

def test_cli_superpixel_mode(synthetic_dataset, capsys):
    assert main(["--dataset_dir", str(synthetic_dataset), "--mode", "superpixel", "--n_segments", "12",
                 "--min_area", "100", "--no_progress"]) == 0
    assert "segment IDs" in capsys.readouterr().out
    assert all(ids.shape == (64, 80) for ids in split_ids(synthetic_dataset))


def test_cli_missing_checkpoint_points_to_the_download_script(synthetic_dataset, tmp_path, capsys):
    code = main(["--dataset_dir", str(synthetic_dataset), "--sam_checkpoint", str(tmp_path / "none.pth")])
    assert code == 2
    assert "segmask/download.sh" in capsys.readouterr().err
    assert not any((p / "masks.npy").exists() for p in list_scenes(synthetic_dataset, "Training"))
    with pytest.raises(SamCheckpointError, match="download.sh"):
        build_sam("vit_b", tmp_path / "none.pth")


def test_runs_as_a_script_and_as_a_module(synthetic_dataset):
    for command in (["segmask/segment.py"], ["-m", "segmask.segment"]):
        result = subprocess.run(
            [sys.executable, *command, "--dataset_dir", str(synthetic_dataset), "--train_path", "Test",
             "--mode", "random", "--overwrite", "--no_progress"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "2 segment IDs" in result.stdout


# --- the real SAM code path on a tiny random model ----------------------------------------------

@pytest.fixture
def tiny_sam_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return path


RELAXED = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def test_build_sam_loads_the_checkpoint(tiny_sam_checkpoint):
    model = build_sam("tiny", tiny_sam_checkpoint)
    saved = torch.load(tiny_sam_checkpoint, weights_only=True)
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_sam_proposer_returns_masks_of_the_image_size(synthetic_dataset, tiny_sam_checkpoint):
    proposer = SamMaskProposer("tiny", tiny_sam_checkpoint, **RELAXED)
    assert proposer.settings["crop_n_layers"] == RELEASED_GENERATOR_SETTINGS["crop_n_layers"] == 0
    image = read_ldr_uint8(list_scenes(synthetic_dataset, "Training")[0] / "input_2.tif")
    masks = proposer(image)
    assert masks
    for record in masks:
        assert record["segmentation"].shape == image.shape[:2] and record["area"] >= 0


def test_cli_sam_mode_with_a_tiny_model(synthetic_dataset, tiny_sam_checkpoint):
    args = ["--dataset_dir", str(synthetic_dataset), "--mode", "sam", "--model_type", "tiny",
            "--sam_checkpoint", str(tiny_sam_checkpoint), "--device", "cpu", "--min_area", "20",
            "--points_per_side", "4", "--pred_iou_thresh", "0", "--stability_score_thresh", "0", "--no_progress"]
    assert main(args) == 0
    all_ids = split_ids(synthetic_dataset)
    assert all(ids.shape == (64, 80) for ids in all_ids)
    present = np.concatenate([np.unique(ids) for ids in all_ids])
    np.testing.assert_array_equal(present, np.arange(len(present)))  # unique and consecutive
    assert len(present) > len(all_ids)  # SAM's masks were painted, not only backgrounds
