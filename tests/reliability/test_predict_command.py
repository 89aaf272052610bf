"""predict.py against bad input and faults: each case checks the exit code, the one ``error:``
line and that no input (frames, exposure file, checkpoint) and no earlier output changed."""
from __future__ import annotations

import codecs
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.synthetic import render_scene
from evaluation import predict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINT = FIXTURES / "tiny_n3_32x32.pth"
SIZE = (33, 41)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return render_scene(np.random.default_rng(5), SIZE, (0.0, 2.0, 4.0)).ldrs


def write_bracket(folder: Path, ldrs: np.ndarray, stops: str | None = "0\n2\n4\n", suffix: str = ".png",
                  gray: tuple[int, ...] = ()) -> Path:
    """Frames ``input_<i><suffix>`` (8-bit; those listed in ``gray`` as one-channel images) and
    an exposure.txt holding ``stops`` as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, ldr in enumerate(ldrs, start=1):
        pixels = cv2.cvtColor(np.rint(ldr * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        if index in gray:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        assert cv2.imwrite(str(folder / f"input_{index}{suffix}"), pixels)
    if stops is not None:
        (folder / "exposure.txt").write_text(stops)
    return folder


def run(*args: object, checkpoint: Path = CHECKPOINT) -> int:
    return predict.main(["--pretrained_model", str(checkpoint), "--no_progress", *map(str, args)])


def broken_checkpoint(tmp_path: Path) -> Path:
    data = torch.load(CHECKPOINT, weights_only=True)
    state = data.get("state_dict", data)
    key = next(k for k, v in state.items() if v.is_floating_point() and k.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    path = tmp_path / "diverged.pth"
    torch.save(data, path)
    return path


# --- outputs stay inside --save_dir and never replace an input ----------------------------------

@pytest.mark.parametrize("name", ["../../x", "../x", "sub/x", "/tmp/x", "..", ".", "", " x"])
def test_a_name_is_a_file_name_inside_save_dir(tmp_path, frames, error_line, checksums, name):
    bracket = write_bracket(tmp_path / "hall", frames)
    before = checksums(tmp_path)
    assert run("--save_dir", tmp_path / "out" / "deep", "--name", name, bracket) == 2
    error_line("--name", "plain file name")
    before.assert_unchanged()
    assert not (tmp_path / "out").exists() and not Path("/tmp/x.hdr").exists()


def test_outputs_never_replace_a_frame(tmp_path, frames, error_line, checksums):
    bracket = write_bracket(tmp_path / "hall", frames)
    before = checksums(tmp_path)
    # the bracket's own folder as --save_dir and a frame's name as --name: hall/input_2.png
    assert run("--save_dir", bracket, "--name", "input_2", bracket) == 2
    error_line("refusing to write", "input_2.png", "--save_dir")
    before.assert_unchanged()


def test_outputs_never_replace_the_checkpoint(tmp_path, frames, error_line, checksums):
    bracket = write_bracket(tmp_path / "hall", frames)
    checkpoint = tmp_path / "models" / "model.exr"  # any suffix: the file is what counts
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(CHECKPOINT.read_bytes())
    before = checksums(tmp_path)
    assert run("--save_dir", checkpoint.parent, "--name", "model", "--exr", bracket, checkpoint=checkpoint) == 2
    error_line("refusing to write", "model.exr")
    before.assert_unchanged()


# --- numbers that are not numbers -----------------------------------------------------------------

def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(tmp_path, frames, error_line):
    bracket = write_bracket(tmp_path / "hall", frames)
    assert run("--save_dir", tmp_path / "out", bracket, checkpoint=broken_checkpoint(tmp_path)) == 1
    line = error_line("diverged.pth", "NaN")
    assert "tensor " in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stops, words", [
    ("0\n2\n200\n", ["±32"]), ("0\n0\n0\n", ["equal"]), ("-1e400\n0\n2\n", ["finite"]),
])
def test_exposure_values_that_cannot_be_used_are_refused(tmp_path, frames, error_line, checksums, stops, words):
    bracket = write_bracket(tmp_path / "hall", frames, stops)
    before = checksums(tmp_path)
    assert run("--save_dir", tmp_path / "out", bracket) == 2
    error_line("exposure.txt", *words)
    before.assert_unchanged()


@pytest.mark.parametrize("stops, words", [(["0", "2", "200"], ["--stops", "±32"]), (["1", "1", "1"], ["equal"])])
def test_stops_that_cannot_be_used_are_refused(tmp_path, frames, error_line, stops, words):
    bracket = write_bracket(tmp_path / "hall", frames, stops=None)
    assert run("--save_dir", tmp_path / "out", bracket, "--stops", *stops) == 2
    error_line(*words)
    assert not (tmp_path / "out").exists()


def test_exposures_that_do_not_start_at_zero_are_used_as_given_with_one_note(tmp_path, frames, caplog,
                                                                              monkeypatch):
    from datasets import scene

    monkeypatch.setattr(scene, "_OFFSET_NOTED", set())
    shifted = [write_bracket(tmp_path / name, frames, "-4\n-2\n0\n") for name in ("a", "b")]
    assert run("--save_dir", tmp_path / "out", "--no_align", *shifted) == 0
    notes = [r.getMessage() for r in caplog.records if "not 0" in r.getMessage()]
    assert len(notes) == 1 and "start at -4" in notes[0] and "used as given" in notes[0]


# --- files real people have -----------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-8-sig crlf", "utf-16 crlf", "cr"])
def test_an_exposure_file_from_another_editor_is_read(tmp_path, frames, encoding):
    plain = write_bracket(tmp_path / "plain", frames)
    edited = write_bracket(tmp_path / "edited", frames, stops=None)
    text = "0\r\n2\r\n4\r\n" if "crlf" in encoding else "0\r2\r4\r"
    raw = codecs.BOM_UTF8 + text.encode() if encoding.startswith("utf-8") else \
        text.encode("utf-16") if encoding.startswith("utf-16") else text.encode()
    (edited / "exposure.txt").write_bytes(raw)
    assert run("--save_dir", tmp_path / "out", plain, edited) == 0
    out = tmp_path / "out"
    assert np.array_equal(cv2.imread(str(out / "plain.hdr"), -1), cv2.imread(str(out / "edited.hdr"), -1))


def test_a_truncated_jpeg_is_refused(tmp_path, frames, error_line, checksums):
    bracket = write_bracket(tmp_path / "hall", frames, suffix=".jpg")
    broken = bracket / "input_2.jpg"
    broken.write_bytes(broken.read_bytes()[:-200])
    before = checksums(tmp_path)
    assert run("--save_dir", tmp_path / "out", bracket) == 2
    error_line(str(broken), "truncated")
    before.assert_unchanged()


def test_a_grayscale_frame_among_colour_frames_is_refused(tmp_path, frames, error_line):
    bracket = write_bracket(tmp_path / "hall", frames, gray=(3,))
    assert run("--save_dir", tmp_path / "out", bracket) == 2
    error_line("input_3.png", "grayscale", "input_1.png")
    assert not (tmp_path / "out" / "hall.hdr").exists()


def test_an_all_grayscale_bracket_is_merged_as_gray_rgb_and_said_so(tmp_path, frames, caplog):
    bracket = write_bracket(tmp_path / "hall", frames, gray=(1, 2, 3))
    assert run("--save_dir", tmp_path / "out", bracket) == 0
    assert any("every frame is grayscale" in r.getMessage() for r in caplog.records)
    hdr = cv2.imread(str(tmp_path / "out" / "hall.hdr"), -1)
    assert hdr.shape == (*SIZE, 3)


# --- a disk that cannot take the outputs ----------------------------------------------------------

def fill(disk: Path) -> None:
    """Write a file until the filesystem is full."""
    try:
        with open(disk / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass


@pytest.mark.parametrize("extra", [[], ["--exr"]])
def test_a_full_disk_is_exit_1_in_one_line_and_keeps_earlier_outputs(tmp_path, frames, error_line,
                                                                      small_filesystem, extra):
    disk = small_filesystem(256)
    assert run("--save_dir", disk, *extra, write_bracket(tmp_path / "first", frames)) == 0
    kept = {p.name: p.read_bytes() for p in disk.iterdir()}
    fill(disk)
    assert run("--save_dir", disk, *extra, write_bracket(tmp_path / "second", frames)) == 1
    error_line("no space left", "second")
    assert {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"} == kept
    assert not [p for p in disk.iterdir() if p.name.startswith(".")]


def test_a_read_only_save_dir_is_refused_before_the_network_runs(tmp_path, frames, error_line, small_filesystem):
    disk = small_filesystem(64, read_only=True)
    assert run("--save_dir", disk / "out", write_bracket(tmp_path / "hall", frames)) == 2
    error_line("--save_dir", "read-only")


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_a_broken_link_among_the_frames_is_named(tmp_path, frames, error_line, kind):
    import os

    bracket = write_bracket(tmp_path / "hall", frames)
    link = bracket / "input_4.png"
    os.symlink(link if kind == "loop" else tmp_path / "gone.png", link)
    assert run("--save_dir", tmp_path / "out", bracket) == 2
    error_line("input_4.png", "symbolic link")
    assert not (tmp_path / "out").exists()
