"""evaluation.merger.HDRMerger: the Python API gives predict.py's and test.py's numbers, takes
frames in every accepted form, and the README's example runs as written."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.preprocess import build_network_input
from datasets.synthetic import render_scene
from evaluation import predict
from evaluation.merger import HDRMerger, as_unit_frames, format_duration
from models.checkpoint import load_model
from models.inference import InferenceSettings, reconstruct, reconstruct_tiled
from utils.image_io import read_hdr, write_hdr, write_ldr

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "tests" / "fixtures" / "tiny_n3_32x32.pth"
STOPS = (0.0, 2.0, 4.0)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return render_scene(np.random.default_rng(4), (40, 56), STOPS).ldrs


def released(frames: np.ndarray) -> np.ndarray:
    inputs = torch.from_numpy(build_network_input(frames, STOPS))[None]
    return reconstruct(load_model(CHECKPOINT).eval(), inputs)[0].permute(1, 2, 0).numpy()


def test_gamma_frames_unaligned_give_the_released_protocols_output(frames) -> None:
    hdr = HDRMerger(CHECKPOINT).merge(frames, STOPS, response="gamma", align=False)
    assert hdr.dtype == np.float32 and hdr.shape == (40, 56, 3)
    np.testing.assert_array_equal(hdr, released(frames))


def test_a_checkpoint_dict_a_state_dict_and_a_network_load_the_same(frames) -> None:
    data = torch.load(CHECKPOINT, weights_only=True)
    expected = HDRMerger(CHECKPOINT).merge(frames, STOPS, response="gamma", align=False)
    for checkpoint in (data, load_model(CHECKPOINT)):
        hdr = HDRMerger(checkpoint).merge(frames, STOPS, response="gamma", align=False)
        np.testing.assert_array_equal(hdr, expected)


def test_integer_frames_are_scaled_as_the_readers_scale_files(frames) -> None:
    codes = np.rint(frames * 255).astype(np.uint8)
    np.testing.assert_array_equal(as_unit_frames(codes), codes.astype(np.float32) / np.float32(255))
    wide = (frames * 65535).astype(np.uint16)
    np.testing.assert_array_equal(as_unit_frames(wide), wide.astype(np.float32) / np.float32(2**16))
    with pytest.raises(ValueError, match="n×H×W×3"):
        as_unit_frames(frames[..., :2])
    with pytest.raises(ValueError, match="increasing"):
        HDRMerger(CHECKPOINT).merge(frames, (4.0, 2.0, 0.0))


def test_merge_files_matches_predict_py(tmp_path: Path, frames, capsys) -> None:
    folder = tmp_path / "hall"
    for index, frame in enumerate(frames, start=1):
        write_ldr(folder / f"input_{index}.tif", frame, bit_depth=16)
    (folder / "exposure.txt").write_text("0\n2\n4\n")  # a benchmark folder: gamma, not aligned
    hdr, preview = HDRMerger(CHECKPOINT).merge_files(folder, preview=True)
    assert preview.dtype == np.uint8 and preview.shape == hdr.shape
    assert predict.main(["--pretrained_model", str(CHECKPOINT), "--no_progress", "--save_dir",
                         str(tmp_path / "out"), str(folder)]) == 0
    write_hdr(tmp_path / "api.hdr", hdr)
    np.testing.assert_array_equal(read_hdr(tmp_path / "api.hdr"), read_hdr(tmp_path / "out" / "hall.hdr"))


def test_tiles_and_automatic_tiling(frames) -> None:
    merger = HDRMerger(CHECKPOINT, tile=128, tile_overlap=16)
    big = np.concatenate([np.concatenate([frames] * 3, axis=2)] * 4, axis=1)  # 160×168
    assert merger.settings_for(big.shape[1:3]).tile == 128
    inputs = torch.from_numpy(build_network_input(big, STOPS))[None]
    expected = reconstruct_tiled(load_model(CHECKPOINT).eval(), inputs, 128, 16)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(merger.merge(big, STOPS, response="gamma", align=False), expected)
    assert HDRMerger(CHECKPOINT).settings_for((40, 56)) == InferenceSettings()  # auto: one pass fits
    with pytest.raises(ValueError):
        HDRMerger(CHECKPOINT, tile=64)


def test_durations_read_naturally() -> None:
    assert [format_duration(s) for s in (0.2, 40, 180, 3900)] == ["1 s", "40 s", "3 min", "1 h 5 min"]


def test_the_readme_example_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    names: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102
    hdr, preview = names["hdr"], names["preview"]
    assert isinstance(hdr, np.ndarray) and hdr.dtype == np.float32 and hdr.shape == (256, 384, 3)
    assert np.isfinite(hdr).all() and hdr.max() > 0
    assert preview.dtype == np.uint8 and preview.shape == hdr.shape
