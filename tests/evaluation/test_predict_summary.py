"""predict.py's summary.json, its time estimate before a large or tiled image and the progress
bar over tiles (which must not change the output)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.synthetic import render_scene
from evaluation import predict

CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_n3_32x32.pth"


def write_bracket(folder: Path, ldrs: np.ndarray, stops: str | None = "0\n2\n4\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, ldr in enumerate(ldrs, start=1):
        cv2.imwrite(str(folder / f"input_{index}.png"), cv2.cvtColor(np.rint(ldr * 255).astype(np.uint8),
                                                                      cv2.COLOR_RGB2BGR))
    if stops is not None:
        (folder / "exposure.txt").write_text(stops)
    return folder


def run(*args: object, checkpoint: Path = CHECKPOINT) -> int:
    return predict.main(["--pretrained_model", str(checkpoint), *map(str, args)])


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return render_scene(np.random.default_rng(6), (150, 170), (0.0, 2.0, 4.0)).ldrs


def test_summary_records_every_bracket(tmp_path: Path, frames, capsys) -> None:
    bench = write_bracket(tmp_path / "bench", frames)
    photo = write_bracket(tmp_path / "photo", frames, stops=None)
    out = tmp_path / "out"
    assert run("--no_progress", "--save_dir", out, "--stops", "-2", "0", "2", "--", bench) == 0
    assert run("--no_progress", "--save_dir", out, "--tile", "128", "--response", "srgb", bench, photo,
               "--stops", "0", "2", "4") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == str(CHECKPOINT)
    first, second = summary["brackets"]  # this run's brackets only
    assert first["name"] == "bench" and second["name"] == "photo"
    assert first["files"] == [str(bench / f"input_{i}.png") for i in (1, 2, 3)]
    assert first["stops"] == [0.0, 2.0, 4.0] and first["stops_from"] == "--stops"
    assert first["response"] == {"option": "srgb", "file": None, "used": "sRGB", "label": "sRGB", "note": None}
    assert first["alignment"].startswith("aligned (")
    assert first["tiling"]["tile"] == 128 and first["tiling"]["tiles"] == 4 and first["tiling"]["overlap"] == 32
    assert first["width"] == 170 and first["height"] == 150
    assert first["seconds"]["total"] >= first["seconds"]["network"] > 0
    assert first["outputs"] == ["bench.hdr", "bench.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_summary_of_a_benchmark_folder_and_a_fallback_note(tmp_path: Path, frames, monkeypatch) -> None:
    from datasets import response

    bench = write_bracket(tmp_path / "bench", frames)
    out = tmp_path / "out"
    assert run("--no_progress", "--save_dir", out, bench) == 0
    record = json.loads((out / "summary.json").read_text())["brackets"][0]
    assert record["stops_from"] == "exposure.txt" and record["alignment"] == "not aligned"
    assert record["response"]["option"] == "gamma" and record["response"]["note"] is None
    assert record["tiling"] == {"tile": 0, "overlap": 0, "tiles": 1, "mode": "one pass (released protocol)",
                                "amp": "fp32"}

    def unreliable(*_: object) -> response.ResponseEstimate:
        return response.ResponseEstimate(response.srgb_response(), None, "too few well-exposed pixels", 0,
                                         float("inf"))

    monkeypatch.setattr(response, "estimate_response", unreliable)
    assert run("--no_progress", "--save_dir", out, "--response", "auto", "--no_align", bench) == 0
    record = json.loads((out / "summary.json").read_text())["brackets"][0]
    assert record["response"]["option"] == "auto" and record["response"]["used"] == "sRGB"
    assert "too few well-exposed pixels" in record["response"]["note"]


def test_summary_json_never_replaces_an_input(tmp_path: Path, frames, capsys) -> None:
    bench = write_bracket(tmp_path / "bench", frames)
    checkpoint = tmp_path / "models" / "summary.json"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(CHECKPOINT.read_bytes())
    before = checkpoint.read_bytes()
    assert run("--no_progress", "--save_dir", checkpoint.parent, bench, checkpoint=checkpoint) == 2
    err = capsys.readouterr().err
    assert "refusing to write" in err and "summary.json" in err
    assert checkpoint.read_bytes() == before and not (checkpoint.parent / "bench.hdr").exists()


def test_estimate_and_progress_over_tiles_leave_the_output_unchanged(tmp_path: Path, frames, capsys) -> None:
    bench = write_bracket(tmp_path / "bench", frames)
    assert run("--no_progress", "--save_dir", tmp_path / "quiet", "--tile", "128", bench) == 0
    quiet = capsys.readouterr()
    assert run("--save_dir", tmp_path / "shown", "--tile", "128", bench) == 0
    shown = capsys.readouterr()
    for captured in (quiet, shown):
        assert "bench: 170×150, expect about " in captured.out
        assert "s per tile × 4 tiles)" in captured.out
    assert "tile" not in quiet.err  # --no_progress: no bar
    assert re.search(r"bench: +\d+%.*\d/4 \[", shown.err) and "tile" in shown.err  # the bar over 4 tiles
    for suffix in (".hdr", ".png"):
        assert (tmp_path / "quiet" / f"bench{suffix}").read_bytes() == (tmp_path / "shown" / f"bench{suffix}").read_bytes()


def test_small_one_pass_images_get_no_estimate(tmp_path: Path, frames, capsys) -> None:
    assert run("--no_progress", "--save_dir", tmp_path / "out", write_bracket(tmp_path / "bench", frames)) == 0
    assert "expect about" not in capsys.readouterr().out
