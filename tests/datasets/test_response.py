"""Camera responses (datasets.response, predict.py --response): brackets rendered from the real
radiance maps through known camera curves, as 8-bit PNG, camera-style JPEG with EXIF and 16-bit
TIFF; the recovered curve, the merged result, response files and the fallback."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from benchmarks.bench_response import CAMERA_CURVES, encode_bracket, true_response
from datasets.align import align_bracket
from datasets.bracket import read_bracket
from datasets.real_scenes import load_radiance_maps, render_real_scene
from datasets.response import (GAMMA_NAME, LEVELS, SRGB_NAME, WELL_EXPOSED, Response, ResponseError, check_estimate,
                               estimate_response, gamma_response, knots, load_response, save_response,
                               srgb_response)
from evaluation import predict
from evaluation.metrics import psnr_mu
from utils.image_io import read_hdr, write_ldr

DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "pretrain_model" / "demo_smnet.pth"
SIZE = (128, 160)
STOPS = (0.0, 2.0, 4.0)
CURVE_TOLERANCE = 0.05
"""Largest |recovered − true| of the response (1 at white) over the well-exposed codes 13–242."""
MIN_GAIN_DB = 5.0
"""Least PSNR-μ the estimated response must win over the gamma assumption on a non-gamma curve."""
MAX_LOSS_TO_TRUE_DB = 1.5
"""Most PSNR-μ the estimated response may lose to the true curve."""


@pytest.fixture(scope="module")
def scene():
    """A held-out scene (courtyard, objects from the other test maps moving, camera shake)."""
    maps = load_radiance_maps()
    return render_real_scene(np.random.default_rng(0), maps, "courtyard", ["sunrise", "Desk"], SIZE, STOPS)


@pytest.fixture(scope="module")
def registered(scene) -> np.ndarray:
    """The scene's gamma-2.2 frames registered to the reference (a tripod bracket, objects moving)."""
    return align_bracket(scene.ldrs, STOPS, len(STOPS) // 2)[0]


def write_jpegs(folder: Path, frames: np.ndarray, stops=STOPS) -> list[Path]:
    """Camera-style JPEGs (quality 95) whose EXIF records the exposure time as a rational."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (frame, stop) in enumerate(zip(frames, stops), start=1):
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ExposureTime] = IFDRational(1, round(400 / 2.0**stop))
        paths.append(folder / f"IMG_{index:04d}.JPG")
        Image.fromarray(np.rint(frame * 255).astype(np.uint8)).save(paths[-1], exif=exif, quality=95)
    return paths


def write_pngs(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"f{index}.png"), cv2.cvtColor(np.rint(frame * 255).astype(np.uint8),
                                                                  cv2.COLOR_RGB2BGR))


def write_tiffs(folder: Path, frames: np.ndarray) -> None:
    for index, frame in enumerate(frames, start=1):
        write_ldr(folder / f"f{index}.tif", frame, bit_depth=16)


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = predict.main(["--pretrained_model", str(DEMO_CHECKPOINT), "--no_progress", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------
# The recovered curve
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("file_format", ["png", "jpeg", "tiff16"])
@pytest.mark.parametrize("curve", list(CAMERA_CURVES))
def test_recovered_response_is_close_to_the_true_one(tmp_path: Path, registered, curve: str,
                                                     file_format: str) -> None:
    encode = CAMERA_CURVES[curve]
    if file_format == "tiff16":
        write_tiffs(tmp_path, encode_bracket(registered, encode, levels=65535))
    elif file_format == "jpeg":
        write_jpegs(tmp_path, encode_bracket(registered, encode))
    else:
        write_pngs(tmp_path, encode_bracket(registered, encode))
    bracket = read_bracket(tmp_path, stops=list(STOPS))
    estimate = estimate_response(bracket.ldrs, bracket.stops)
    assert estimate.reliable, estimate.note
    low, high = WELL_EXPOSED
    error = np.abs(estimate.fitted - true_response(encode).curve)[low:high + 1]
    assert error.max() < CURVE_TOLERANCE, (curve, file_format, error.max())
    # The standard curves are recognised as such, the others are not mistaken for them.
    expected = {"gamma 2.2": GAMMA_NAME, "sRGB": SRGB_NAME}.get(curve)
    if expected is not None:
        assert estimate.response.name in (expected, "estimated")
    else:
        assert estimate.response.name == "estimated"


def test_16_bit_frames_are_linearised_between_the_knots() -> None:
    response = Response(knots() ** 2.0, "square")
    values = np.array([[[0.5, 0.25, 1.0]]], dtype=np.float32)
    np.testing.assert_allclose(response.linearise(values), values**2, atol=2e-5)
    per_channel = Response(np.stack([knots(), knots() ** 2, knots() ** 3], axis=1), "per channel")
    np.testing.assert_allclose(per_channel.linearise(np.full((1, 1, 3), 0.5, np.float32)), [[[0.5, 0.25, 0.125]]],
                               atol=1e-5)
    np.testing.assert_array_equal(gamma_response().to_gamma(values), values)


# ---------------------------------------------------------------------------
# predict.py: the merged result, files, the fallback
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("curve", ["sRGB", "sRGB + strong S", "film toe/shoulder"])
def test_estimated_response_beats_the_gamma_assumption(tmp_path: Path, scene, capsys, curve: str) -> None:
    # Hand-held camera JPEGs with EXIF exposure times: predict aligns them, as it does by default.
    encode = CAMERA_CURVES[curve]
    write_jpegs(tmp_path / "bracket", encode_bracket(scene.ldrs, encode))
    save_response(tmp_path / "true.csv", true_response(encode))
    scores = {}
    for mode, option in (("gamma", "gamma"), ("auto", "auto"), ("true", tmp_path / "true.csv")):
        code, out, _ = run(capsys, "--save_dir", tmp_path / mode, "--response", option, tmp_path / "bracket")
        assert code == 0 and "aligned (" in out
        scores[mode] = psnr_mu(read_hdr(tmp_path / mode / "bracket.hdr"), scene.label)
    assert scores["auto"] > scores["gamma"] + MIN_GAIN_DB, scores
    assert scores["auto"] > scores["true"] - MAX_LOSS_TO_TRUE_DB, scores


@pytest.mark.parametrize("align", [True, False])
def test_saved_response_reproduces_the_result(tmp_path: Path, scene, registered, capsys, align: bool) -> None:
    frames = encode_bracket(scene.ldrs if align else registered, CAMERA_CURVES["sRGB + mild S"])
    write_jpegs(tmp_path / "bracket", frames)
    options = [] if align else ["--no_align"]
    code, out, _ = run(capsys, "--save_dir", tmp_path / "auto", "--save_response", tmp_path / "camera.csv",
                       *options, tmp_path / "bracket")
    assert code == 0 and "response estimated (auto" in out, out
    saved = load_response(tmp_path / "camera.csv")
    assert saved.curve.shape == (LEVELS,) and saved.curve[-1] == 1.0
    code, out, _ = run(capsys, "--save_dir", tmp_path / "file", "--response", tmp_path / "camera.csv",
                       *options, tmp_path / "bracket")
    assert code == 0 and "response file camera.csv" in out, out
    np.testing.assert_array_equal(read_hdr(tmp_path / "auto" / "bracket.hdr"),
                                  read_hdr(tmp_path / "file" / "bracket.hdr"))


def test_response_file_formats(tmp_path: Path) -> None:
    curve = np.stack([knots() ** 2.0, knots() ** 2.2, knots() ** 2.4], axis=1) * 3.0  # any scale
    np.savetxt(tmp_path / "rgb.txt", curve, header="three columns, whitespace")
    np.save(tmp_path / "rgb.npy", curve)
    for name in ("rgb.txt", "rgb.npy"):
        loaded = load_response(tmp_path / name)
        np.testing.assert_allclose(loaded.curve, curve / 3.0)
        assert loaded.name == f"file {name}" and loaded.path == tmp_path / name
    save_response(tmp_path / "srgb.csv", srgb_response())
    np.testing.assert_array_equal(load_response(tmp_path / "srgb.csv").curve, srgb_response().curve)
    save_response(tmp_path / "gamma.npy", gamma_response())
    assert load_response(tmp_path / "gamma.npy").is_gamma  # passes frames unchanged, as gamma does


def bad_missing(folder: Path) -> Path:
    return folder / "missing.csv"


def bad_too_short(folder: Path) -> Path:
    np.savetxt(folder / "short.csv", knots()[:100])
    return folder / "short.csv"


def bad_not_numbers(folder: Path) -> Path:
    (folder / "words.csv").write_text("black\n" * LEVELS)
    return folder / "words.csv"


def bad_decreasing(folder: Path) -> Path:
    np.savetxt(folder / "down.csv", 1.0 - knots())
    return folder / "down.csv"


def bad_not_finite(folder: Path) -> Path:
    curve = knots().copy()
    curve[7] = np.nan
    np.savetxt(folder / "nan.csv", curve)
    return folder / "nan.csv"


def bad_ragged(folder: Path) -> Path:
    (folder / "ragged.csv").write_text("0,0,0\n" + "0.5\n" * (LEVELS - 1))
    return folder / "ragged.csv"


def bad_pickled(folder: Path) -> Path:
    np.save(folder / "objects.npy", np.array([{"curve": 1}], dtype=object), allow_pickle=True)
    return folder / "objects.npy"


@pytest.mark.parametrize("make_bad", [bad_missing, bad_too_short, bad_not_numbers, bad_decreasing, bad_not_finite,
                                      bad_ragged, bad_pickled], ids=lambda f: f.__name__[4:])
def test_bad_response_file_is_one_error_line(tmp_path: Path, scene, capsys, make_bad) -> None:
    write_jpegs(tmp_path / "bracket", encode_bracket(scene.ldrs, CAMERA_CURVES["sRGB"]))
    bad = make_bad(tmp_path)
    with pytest.raises(ResponseError):
        load_response(bad)
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "--save_dir", out_dir, "--response", bad, "--save_response", tmp_path / "saved.csv",
                       tmp_path / "bracket")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and bad.name in err, err
    assert not out_dir.exists() and not (tmp_path / "saved.csv").exists()


def test_save_response_needs_one_bracket(tmp_path: Path, scene, capsys) -> None:
    frames = encode_bracket(scene.ldrs, CAMERA_CURVES["sRGB"])
    write_jpegs(tmp_path / "a", frames)
    write_jpegs(tmp_path / "b", frames)
    code, _, err = run(capsys, "--save_dir", tmp_path / "out", "--save_response", tmp_path / "r.csv",
                       tmp_path / "a", tmp_path / "b")
    assert code == 2 and "--save_response" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.csv").exists()


def test_benchmark_folders_keep_gamma_unless_asked(tmp_path: Path, registered, capsys) -> None:
    folder = tmp_path / "scene"
    write_tiffs(folder, encode_bracket(registered, CAMERA_CURVES["sRGB + strong S"], levels=65535))
    (folder / "exposure.txt").write_text("0\n2\n4\n")
    code, out, _ = run(capsys, "--save_dir", tmp_path / "out", folder)
    assert code == 0 and "response gamma 2.2 (benchmark folder)" in out
    code, out, _ = run(capsys, "--save_dir", tmp_path / "out", "--response", "auto", folder)
    assert code == 0 and "response estimated (auto" in out


# ---------------------------------------------------------------------------
# When the estimate cannot be trusted
# ---------------------------------------------------------------------------

def test_too_few_samples_fall_back_to_srgb(tmp_path: Path, registered, capsys) -> None:
    crop = np.ascontiguousarray(encode_bracket(registered, CAMERA_CURVES["sRGB + mild S"])[:, :12, :16])
    estimate = estimate_response(crop, np.asarray(STOPS))
    assert not estimate.reliable and "too few well-exposed samples" in estimate.note
    assert estimate.response.name == SRGB_NAME
    write_jpegs(tmp_path / "small", crop)
    code, out, _ = run(capsys, "--save_dir", tmp_path / "out", "--no_align", tmp_path / "small")
    notes = [line for line in out.splitlines() if line.startswith("note: small:")]
    assert code == 0 and len(notes) == 1 and "unreliable" in notes[0] and "sRGB" in notes[0], out
    assert "response sRGB (auto, estimate unreliable)" in out


def test_frames_of_different_scenes_fall_back_to_srgb(registered) -> None:
    frames = encode_bracket(registered, CAMERA_CURVES["sRGB"])
    # Each frame turned another way: no two of them show the same scene at the same pixels.
    mixed = np.ascontiguousarray(np.stack([frames[0], frames[1, ::-1], frames[2, :, ::-1]]))
    estimate = estimate_response(mixed, np.asarray(STOPS))
    assert not estimate.reliable and ("disagree" in estimate.note or "does not increase" in estimate.note)
    assert estimate.response.name == SRGB_NAME


def test_a_misregistered_frame_is_left_out(registered) -> None:
    frames = encode_bracket(registered, CAMERA_CURVES["sRGB + strong S"])
    shifted = np.stack([frames[0], frames[1], np.roll(frames[2], (9, 14), axis=(0, 1))])
    estimate = estimate_response(shifted, np.asarray(STOPS))
    assert estimate.reliable and estimate.left_out == ((0, 2), (1, 2)), (estimate.note, estimate.left_out)
    low, high = WELL_EXPOSED
    error = np.abs(estimate.fitted - true_response(CAMERA_CURVES["sRGB + strong S"]).curve)[low:high + 1]
    assert error.max() < CURVE_TOLERANCE


def test_check_estimate_definitions() -> None:
    good = knots() ** 2.2
    assert check_estimate(good, 10_000, 0.9, 0.1) == ""
    assert "too few" in check_estimate(None, 0, 0.0, float("inf"))
    assert "too few" in check_estimate(good, 100, 0.9, 0.1)
    assert "too few" in check_estimate(good, 10_000, 0.3, 0.1)
    bent = good.copy()
    bent[100] = bent[101]
    assert "does not increase" in check_estimate(bent, 10_000, 0.9, 0.1)
    assert "disagree" in check_estimate(good, 10_000, 0.9, 0.5)
