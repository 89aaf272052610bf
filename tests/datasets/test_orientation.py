"""EXIF orientation of a bracket's frames: every frame comes out upright, as viewers show it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import ExifTags, Image, ImageOps

from datasets.bracket import BracketError, find_bracket, read_bracket, read_orientation, upright

STOPS = ("0", "2", "4")
# For each tag, how to store an upright image so that a viewer (exif_transpose) shows it upright:
# the inverse of exif_transpose's own step, written with Pillow's operations, not the reader's.
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # a viewer turns it back with ROTATE_270
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_frames(count: int = 3, size: tuple[int, int] = (6, 10)) -> list[np.ndarray]:
    """Non-symmetric 8-bit RGB frames (every pixel distinct), brighter for longer exposures."""
    height, width = size
    base = np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3) % 61
    return [(base + 60 * k).astype(np.uint8) for k in range(count)]


def stored(image: np.ndarray, orientation: int) -> Image.Image:
    picture = Image.fromarray(image)
    return picture if STORED[orientation] is None else picture.transpose(STORED[orientation])


def exif_with(orientation: int | None) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    return exif


def write_png_bracket(folder: Path, orientations: list[int | None]) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = upright_frames(len(orientations))
    for index, (frame, orientation) in enumerate(zip(frames, orientations), start=1):
        stored(frame, orientation or 1).save(folder / f"f{index}.png", exif=exif_with(orientation))
    return frames


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_frames_come_out_upright(tmp_path: Path, orientation: int) -> None:
    frames = write_png_bracket(tmp_path, [orientation] * 3)
    assert read_orientation(tmp_path / "f1.png") == orientation
    bracket = read_bracket(tmp_path, stops=[float(s) for s in STOPS])
    assert bracket.source.orientation == orientation
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(bracket.ldrs[index], frame.astype(np.float32) / 255.0)
        with Image.open(tmp_path / f"f{index + 1}.png") as image:
            np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(image)), frame)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_frames_match_exif_transpose(tmp_path: Path, orientation: int) -> None:
    frames = upright_frames(3, (16, 24))
    for index, frame in enumerate(frames, start=1):
        stored(frame, orientation).save(tmp_path / f"f{index}.jpg", exif=exif_with(orientation), quality=95)
    bracket = read_bracket(tmp_path, stops=[float(s) for s in STOPS])
    assert bracket.ldrs.shape == (3, 16, 24, 3)
    for index in range(3):
        with Image.open(tmp_path / f"f{index + 1}.jpg") as image:
            viewed = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        np.testing.assert_array_equal(np.rint(bracket.ldrs[index] * 255).astype(np.uint8), viewed)


def write_tiff_bracket(folder: Path, orientation: int) -> list[np.ndarray]:
    """16-bit TIFFs stored as a viewer needs them for ``orientation``, the tag set (tifffile)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = [frame.astype(np.uint16) * 257 for frame in upright_frames()]
    for index, frame in enumerate(frames, start=1):
        planes = [np.asarray(stored(frame[..., c].astype(np.int32), orientation)) for c in range(3)]
        tifffile.imwrite(folder / f"f{index}.tif", np.stack(planes, axis=-1).astype(np.uint16),
                         photometric="rgb", extratags=[(ExifTags.Base.Orientation, "H", 1, orientation, True)])
    return frames


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_tiff_frames_come_out_upright(tmp_path: Path, orientation: int) -> None:
    frames = write_tiff_bracket(tmp_path, orientation)
    bracket = read_bracket(tmp_path, stops=[float(s) for s in STOPS])
    assert bracket.source.orientation == orientation
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(bracket.ldrs[index], frame.astype(np.float32) / 2**16)


def test_frames_that_disagree_are_refused(tmp_path: Path) -> None:
    write_png_bracket(tmp_path, [6, 6, 8])
    with pytest.raises(BracketError) as raised:
        find_bracket(tmp_path, stops=[0.0, 2.0, 4.0])
    message = str(raised.value)
    assert "\n" not in message and "f1.png" in message and "f3.png" in message and "6 and 8" in message


def test_a_frame_without_the_tag_counts_as_1(tmp_path: Path) -> None:
    write_png_bracket(tmp_path / "agree", [None, 1, None])
    assert find_bracket(tmp_path / "agree", stops=[0.0, 2.0, 4.0]).orientation == 1
    write_png_bracket(tmp_path / "disagree", [None, 6, 6])
    with pytest.raises(BracketError, match="orientations 1 and 6"):
        find_bracket(tmp_path / "disagree", stops=[0.0, 2.0, 4.0])


def test_upright_keeps_the_channels() -> None:
    frame = upright_frames(1, (3, 5))[0]
    for orientation in range(1, 9):
        turned = upright(np.asarray(stored(frame, orientation)), orientation)
        np.testing.assert_array_equal(turned, frame)
        assert turned.flags.c_contiguous
