"""test.py against bad input and faults: each case checks the exit code, the one ``error:`` line
and that no scene file, checkpoint or earlier output changed."""
from __future__ import annotations

import codecs
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation import cli as test_cli
from models.smnet import SMNet
from utils.image_io import write_hdr

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINT = FIXTURES / "tiny_n3_48x64.pth"


def evaluate(dataset: Path, save_dir: Path, *extra: object, checkpoint: Path = CHECKPOINT) -> int:
    return test_cli.main(["--dataset_dir", str(dataset), "--pretrained_model", str(checkpoint),
                          "--save_dir", str(save_dir), "--no_progress", "--no_pu21", *map(str, extra)])


def first_test_scene(dataset: Path) -> Path:
    return next((dataset / "Test").iterdir())


# --- outputs never replace an input ---------------------------------------------------------------

def test_save_dir_inside_a_scene_never_replaces_its_label(dataset, tmp_path, error_line, checksums):
    scene = first_test_scene(dataset)
    renamed = scene.with_name("HDRImg")  # its outputs would be HDRImg.hdr, HDRImg.png
    scene.rename(renamed)
    before = checksums(dataset)
    assert evaluate(dataset, renamed) == 2
    error_line("refusing to write", "HDRImg.hdr", "--save_dir")
    before.assert_unchanged()


def test_the_test_log_never_replaces_an_input(dataset, tmp_path, error_line, checksums):
    scene = first_test_scene(dataset)
    (scene / "exposure.txt").rename(scene / "test.log")
    before = checksums(dataset)
    assert evaluate(dataset, tmp_path / "out", "--exposure_file", "test.log", "--log_dir", scene) == 2
    error_line("refusing to write", "test.log", "--log_dir")
    before.assert_unchanged()
    assert not (tmp_path / "out").exists()


def test_outputs_never_replace_the_checkpoint(dataset, tmp_path, error_line, checksums):
    scene = first_test_scene(dataset)
    checkpoint = tmp_path / "models" / f"{scene.name}.png"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(CHECKPOINT.read_bytes())
    before = checksums(tmp_path / "models")
    assert evaluate(dataset, checkpoint.parent, checkpoint=checkpoint) == 2
    error_line("refusing to write", checkpoint.name)
    before.assert_unchanged()


# --- options that name the wrong file -------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--label_file", "input_1.tif"], ["--label_file input_1.tif", "--ldr_pattern"]),
    (["--exposure_file", "HDRImg.hdr"], ["--exposure_file", "--label_file", "same file"]),
    (["--masks_file", "HDRImg.hdr"], ["--masks_file", "same file"]),
])
def test_a_layout_option_naming_another_part_of_the_scene(dataset, tmp_path, error_line, checksums, extra, words):
    before = checksums(dataset)
    assert evaluate(dataset, tmp_path / "out", *extra) == 2
    error_line(*words)
    before.assert_unchanged()
    assert not (tmp_path / "out").exists()


def test_an_empty_dataset_dir_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        evaluate("", tmp_path / "out")
    err = capsys.readouterr().err
    assert raised.value.code == 2 and "--dataset_dir" in err and "empty" in err and "Traceback" not in err


def test_a_missing_split_names_the_dataset_dir(dataset, tmp_path, error_line):
    assert evaluate(dataset, tmp_path / "out", "--test_path", "Tset") == 2
    error_line("--dataset_dir", "Tset")


def test_a_log_dir_that_is_a_file(dataset, tmp_path, error_line):
    (tmp_path / "log").write_text("an earlier log")
    assert evaluate(dataset, tmp_path / "out", "--log_dir", tmp_path / "log") == 2
    error_line("--log_dir", "is a file")
    assert (tmp_path / "log").read_text() == "an earlier log" and not (tmp_path / "out").exists()


def test_a_read_only_save_dir_names_the_save_dir(dataset, tmp_path, error_line, small_filesystem):
    read_only = small_filesystem(64, read_only=True)
    assert evaluate(dataset, read_only / "results") == 2
    line = error_line("--save_dir", "read-only")
    assert "baselines.csv" not in line


def test_a_checkpoint_that_needs_unpickling_is_one_line(dataset, tmp_path, error_line):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "path": Path("x")}, path)
    assert evaluate(dataset, tmp_path / "out", checkpoint=path) == 1
    line = error_line("pickled.pth", "refused", "pathlib.PosixPath")
    assert "\n" not in line and "WeightsUnpickler" not in line


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(dataset, tmp_path, error_line):
    data = torch.load(CHECKPOINT, weights_only=True)
    state = data.get("state_dict", data)
    key = next(k for k in state if k.endswith("conv_after_body.weight"))
    state[key] = torch.full_like(state[key], float("inf"))
    path = tmp_path / "diverged.pth"
    torch.save(data, path)
    assert evaluate(dataset, tmp_path / "out", checkpoint=path) == 1
    error_line("diverged.pth", "conv_after_body.weight", "NaN or infinite")
    assert not list((tmp_path / "out").glob("*.hdr")) and not (tmp_path / "out" / "summary.json").exists()


# --- exposure files -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [("0\n0\n0\n", ["equal"]), ("0\n2\n200\n", ["±32"]),
                                         ("0\nnan\n4\n", ["finite"])])
def test_exposure_values_that_cannot_be_used(dataset, tmp_path, error_line, checksums, text, words):
    exposure_file = first_test_scene(dataset) / "exposure.txt"
    exposure_file.write_text(text)
    before = checksums(dataset)
    assert evaluate(dataset, tmp_path / "out", "--cache", "none") == 2
    error_line(str(exposure_file), *words)
    before.assert_unchanged()
    assert not (tmp_path / "out").exists()


def test_an_exposure_file_from_a_windows_editor_gives_the_same_numbers(dataset, tmp_path):
    assert evaluate(dataset, tmp_path / "plain", "--cache", "none") == 0
    exposure_file = first_test_scene(dataset) / "exposure.txt"
    values = exposure_file.read_text().split()
    exposure_file.write_bytes(codecs.BOM_UTF8 + "\r\n".join(values).encode() + b"\r\n")
    assert evaluate(dataset, tmp_path / "windows", "--cache", "none") == 0
    assert (tmp_path / "plain" / "metrics.csv").read_text() == (tmp_path / "windows" / "metrics.csv").read_text()


def test_exposures_that_do_not_start_at_zero_are_used_as_given_and_said_once(dataset, tmp_path, caplog, monkeypatch):
    from datasets import scene

    monkeypatch.setattr(scene, "_OFFSET_NOTED", set())
    extra = dataset / "Test" / "second"
    shutil.copytree(first_test_scene(dataset), extra)
    for scene_dir in (dataset / "Test").iterdir():
        (scene_dir / "exposure.txt").write_text("-4\n-2\n0\n")
    assert evaluate(dataset, tmp_path / "out") == 0
    notes = [r.getMessage() for r in caplog.records if "not 0" in r.getMessage()]
    assert len(notes) == 1 and "used as given" in notes[0]


# --- scene folders --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_a_broken_link_among_the_scenes_is_named(dataset, tmp_path, error_line, kind):
    link = dataset / "Test" / "linked_scene"
    if kind == "loop":
        os.symlink(link, link)
    else:
        os.symlink(tmp_path / "gone", link)
    assert evaluate(dataset, tmp_path / "out") == 2
    error_line("linked_scene", "symbolic link")
    assert not (tmp_path / "out").exists()


def test_a_grayscale_frame_among_colour_frames_is_named(dataset, tmp_path, error_line):
    import cv2

    frame = first_test_scene(dataset) / "input_1.tif"
    cv2.imwrite(str(frame), cv2.cvtColor(cv2.imread(str(frame), -1), cv2.COLOR_BGR2GRAY))
    assert evaluate(dataset, tmp_path / "out", "--cache", "none") == 2
    error_line("input_1.tif", "grayscale", "input_2.tif")


def test_a_truncated_jpeg_scene_is_refused(dataset, tmp_path, error_line):
    import cv2

    scene = first_test_scene(dataset)
    for frame in sorted(scene.glob("input_*.tif")):
        cv2.imwrite(str(frame.with_suffix(".jpg")), (cv2.imread(str(frame), -1) // 257).astype("uint8"))
    broken = scene / "input_3.jpg"
    broken.write_bytes(broken.read_bytes()[:-300])
    assert evaluate(dataset, tmp_path / "out", "--ldr_pattern", "*.jpg", "--cache", "none") == 2
    error_line(str(broken), "truncated")
    assert not (tmp_path / "out").exists()


def test_a_broken_link_among_the_checkpoints_is_named(dataset, tmp_path, error_line):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(CHECKPOINT, folder / "a.pth")
    os.symlink(tmp_path / "deleted.pth", folder / "b.pth")
    assert evaluate(dataset, tmp_path / "out", checkpoint=folder) == 2
    error_line("b.pth", "symbolic link to nothing")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", [{"embed_dim": 24, "no_such_option": 1}, {"embed_dim": "wide"},
                                    {"window_size": 0}])
def test_a_checkpoint_config_that_describes_no_network_is_exit_1(small_dataset, tmp_path, capsys, config):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": SMNet(embed_dim=24, depths=[1], num_heads=[2]).state_dict(), "config": config}, path)
    assert evaluate(small_dataset, tmp_path / "out", checkpoint=path) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err


# --- test.py --------------------------------------------------------------------------------------

def test_a_corrupt_test_image_is_exit_2_before_anything_is_written(dataset, tmp_path, error_line):
    target = next((dataset / "Test").iterdir()) / "input_2.tif"
    target.write_bytes(target.read_bytes()[:300])
    assert evaluate(dataset, tmp_path / "out", "--cache", "none") == 2
    error_line(str(target))
    assert not (tmp_path / "out").exists()


def test_a_run_that_fails_halfway_leaves_no_half_file_and_no_stale_tables(small_dataset, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert evaluate(small_dataset, out) == 0
    assert (out / "metrics.csv").is_file() and (out / "summary.json").is_file()
    real_write_bytes = Path.write_bytes

    def full_disk(path, data):
        if path.suffix == ".hdr":
            real_write_bytes(path, data[:11])  # a partial file, then the failure
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    for scene in out.glob("*.hdr"):
        scene.unlink()
    assert evaluate(small_dataset, out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "stopped after writing 0 scene(s)" in err
    assert not list(out.glob("*.hdr")) and not [p for p in out.iterdir() if ".tmp" in p.name]
    assert not (out / "metrics.csv").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize("extra, words", [
    (["--peak_luminance", "0"], ["--peak_luminance"]), (["--peak_luminance", "-3"], ["--peak_luminance"]),
    (["--peak_luminance", "nan"], ["--peak_luminance"]), (["--tile", "16"], ["--tile 16"]),
    (["--device", "cuda:x"], ["--device"]),
])
def test_metric_and_inference_settings_that_cannot_be_right(small_dataset, tmp_path, error_line, extra, words):
    assert evaluate(small_dataset, tmp_path / "out", *extra) == 2
    error_line(*words)


def test_save_dir_that_is_a_file(small_dataset, tmp_path, error_line):
    (tmp_path / "file").write_text("x")
    assert evaluate(small_dataset, tmp_path / "file") == 2
    error_line("--save_dir")


def test_a_label_far_outside_relative_radiance_is_an_error(dataset, tmp_path, error_line):
    scene = next((dataset / "Test").iterdir())
    label = np.full((48, 64, 3), 0.5, np.float32)
    label[0, 0] = 1e38
    write_hdr(scene / "HDRImg.hdr", label)
    assert evaluate(dataset, tmp_path / "out") == 2
    error_line("HDRImg.hdr", "relative radiance")
