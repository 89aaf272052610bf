"""segment.py against bad input: its maps and previews never replace a scene's own files, and
every refusal is one line naming the option."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import pytest

from segmask import segment


def run(dataset: Path, *extra: object) -> int:
    return segment.main(["--dataset_dir", str(dataset), "--mode", "superpixel", "--min_area", "10", "--no_progress",
                         "--overwrite", *map(str, extra)])


@pytest.mark.parametrize("masks_file, words", [
    ("HDRImg.hdr", ["--masks_file HDRImg.hdr", "same file"]),
    ("input_2.tif", ["--masks_file input_2.tif", "--ldr_pattern"]),
    ("exposure.txt", ["--masks_file", "same file"]),
    ("exposure.npy", None),  # its preview exposure.png is harmless: this one runs
])
def test_masks_never_replace_a_scene_file(dataset, error_line, checksums, masks_file, words):
    before = checksums(*[p for p in (dataset / "Training").rglob("*") if p.suffix in (".tif", ".hdr", ".txt")])
    code = run(dataset, "--masks_file", masks_file)
    if words is None:
        assert code == 0
    else:
        assert code == 2
        error_line(*words)
    before.assert_unchanged()


def test_masks_reached_through_a_path_never_replace_the_label(dataset, error_line, checksums):
    before = checksums(dataset)
    assert run(dataset, "--masks_file", "sub/../HDRImg.hdr") == 2
    error_line("refusing to write", "HDRImg.hdr", "--masks_file")
    before.assert_unchanged()


def png_dataset(dataset: Path) -> None:
    """The LDRs of every training scene as 8-bit PNGs (the TIFFs removed)."""
    for frame in list((dataset / "Training").rglob("input_*.tif")):
        cv2.imwrite(str(frame.with_suffix(".png")), (cv2.imread(str(frame), -1) // 257).astype("uint8"))
        frame.unlink()
    for masks in (dataset / "Training").rglob("masks.*"):
        masks.unlink()


def test_the_preview_never_replaces_a_png_exposure(dataset, error_line, checksums):
    png_dataset(dataset)
    before = checksums(dataset)
    # masks input_2.npy → preview input_2.png, which is an exposure of a PNG dataset
    assert run(dataset, "--ldr_pattern", "*.png", "--masks_file", "input_2.npy") == 2
    error_line("refusing to write", "input_2.png", "--masks_file")
    before.assert_unchanged()


def test_a_png_dataset_keeps_its_own_previews(dataset):
    png_dataset(dataset)
    assert run(dataset, "--ldr_pattern", "*.png") == 0
    assert run(dataset, "--ldr_pattern", "*.png") == 0  # masks.png is this command's preview: rewritten
    scene = next((dataset / "Training").iterdir())
    assert (scene / "masks.png").is_file() and len(list(scene.glob("input_*.png"))) == 3


@pytest.mark.parametrize("device", ["cuda:9x", "gpu", "cuda:99"])
def test_a_device_that_does_not_exist_is_one_line(dataset, error_line, checksums, device):
    before = checksums(dataset)
    assert run(dataset, "--device", device) == 2
    error_line(f"--device {device}")
    before.assert_unchanged()


def test_an_empty_dataset_dir_is_named(capsys):
    with pytest.raises(SystemExit) as raised:
        run("")
    err = capsys.readouterr().err
    assert raised.value.code == 2 and "--dataset_dir" in err and "empty" in err and "Traceback" not in err


def test_a_symlink_loop_among_the_scenes_is_named(dataset, error_line, checksums):
    loop = dataset / "Training" / "looping"
    os.symlink(loop, loop)
    before = checksums(*[p for p in (dataset / "Training").iterdir() if p.is_dir() and not p.is_symlink()])
    assert run(dataset) == 2
    error_line("looping", "symbolic link loop")
    before.assert_unchanged()


# --- segment.py -----------------------------------------------------------------------------------

def test_segment_with_a_sam_checkpoint_that_needs_unpickling(small_dataset, tmp_path, error_line):
    path = tmp_path / "sam.pth"
    with path.open("wb") as handle:
        pickle.dump({"weights": Path("x")}, handle)
    assert segment.main(["--dataset_dir", str(small_dataset), "--sam_checkpoint", str(path), "--model_type", "tiny",
                         "--overwrite", "--no_progress"]) == 2
    error_line("SAM checkpoint", str(path))


def test_segment_with_a_missing_split(small_dataset, error_line):
    assert segment.main(["--dataset_dir", str(small_dataset), "--train_path", "Nope", "--mode", "random",
                         "--no_progress"]) == 2
    error_line("Nope")
