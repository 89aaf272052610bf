"""predict.py: brackets of the user's own photos (exposures from --stops, exposure.txt or EXIF),
alignment, outputs and the one-line errors for unusable input."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from datasets import align
from datasets.bracket import BracketError, find_bracket, read_bracket
from datasets.preprocess import build_network_input, exposure_times
from datasets.scene import load_scene
from datasets.synthetic import expose, render_scene, write_scene
from evaluation import predict
from models.checkpoint import load_model, save_model
from models import tiling
from models.inference import reconstruct
from models.smnet import SMNet
from utils.image_io import read_hdr, write_hdr, write_ldr

CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_n3_32x32.pth"
SIZE = (37, 53)  # odd on purpose


def to_uint8(ldr: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(ldr, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_jpeg(path: Path, ldr: np.ndarray, exposure_time: float | None, iso: int | None = None,
               fnumber: float | None = None) -> Path:
    """An 8-bit JPEG whose EXIF sub-IFD records the exposure the way cameras do (rationals)."""
    exif = Image.Exif()
    tags = exif.get_ifd(ExifTags.IFD.Exif)
    if exposure_time is not None:
        tags[ExifTags.Base.ExposureTime] = IFDRational(1, round(1 / exposure_time))
    if iso is not None:
        tags[ExifTags.Base.ISOSpeedRatings] = iso
    if fnumber is not None:
        tags[ExifTags.Base.FNumber] = IFDRational(round(fnumber * 10), 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(ldr)).save(path, exif=exif, quality=95)
    return path


def write_pngs(folder: Path, ldrs: Sequence[np.ndarray], stops: Sequence[float] | None = None) -> list[Path]:
    """8-bit PNGs named in exposure order, with an exposure.txt when ``stops`` are given."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ldr in enumerate(ldrs, start=1):
        paths.append(folder / f"input_{index}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(to_uint8(ldr), cv2.COLOR_RGB2BGR))
    if stops is not None:
        (folder / "exposure.txt").write_text("".join(f"{s:g}\n" for s in stops))
    return paths


def run(capsys: pytest.CaptureFixture, *args: object, checkpoint: Path = CHECKPOINT) -> tuple[int, str, str]:
    code = predict.main(["--pretrained_model", str(checkpoint), "--no_progress", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def scene():
    return render_scene(np.random.default_rng(3), SIZE, (0.0, 2.0, 4.0))


# ---------------------------------------------------------------------------
# Exposures: EXIF, exposure.txt, --stops
# ---------------------------------------------------------------------------

def test_exif_order_and_exposure_file_give_the_same_hdr(tmp_path: Path, scene, capsys) -> None:
    # Misleading names: the longest exposure is a.jpg, the shortest b.jpg.
    jpeg_dir = tmp_path / "jpeg"
    names = ["b.jpg", "c.jpg", "a.jpg"]
    for name, ldr, stop in zip(names, scene.ldrs, scene.exposures):
        write_jpeg(jpeg_dir / name, ldr, 2.0 ** stop / 400, iso=200, fnumber=5.6)
    found = find_bracket(jpeg_dir)
    assert [p.name for p in found.files] == names
    assert found.stops == pytest.approx((0.0, 2.0, 4.0), abs=1e-6)
    assert found.exposure_source == "EXIF" and found.reference_index == 1

    # The same decoded pixels as PNGs named in exposure order, with an exposure.txt.
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    for index, name in enumerate(names, start=1):
        cv2.imwrite(str(png_dir / f"input_{index}.png"), cv2.imread(str(jpeg_dir / name), cv2.IMREAD_UNCHANGED))
    (png_dir / "exposure.txt").write_text("0\n2\n4\n")
    np.testing.assert_array_equal(read_bracket(jpeg_dir).ldrs, read_bracket(png_dir).ldrs)

    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, "--save_dir", out_dir, jpeg_dir)  # EXIF: aligned by default
    assert code == 0 and "from EXIF" in out and "aligned (" in out
    code, out, _ = run(capsys, "--save_dir", out_dir, "--align", png_dir)
    assert code == 0 and "from exposure.txt" in out
    np.testing.assert_array_equal(read_hdr(out_dir / "jpeg.hdr"), read_hdr(out_dir / "png.hdr"))
    assert sorted(p.name for p in out_dir.iterdir()) == ["jpeg.hdr", "jpeg.png", "png.hdr", "png.png", "summary.json"]
    preview = cv2.imread(str(out_dir / "png.png"))
    assert preview.shape == (*SIZE, 3)

    code, out, _ = run(capsys, "--save_dir", out_dir, png_dir)  # a benchmark-style folder: not aligned
    assert code == 0 and "not aligned" in out


def test_benchmark_folder_gives_the_released_protocols_output(tmp_path: Path, scene, capsys) -> None:
    folder = tmp_path / "scene_0001"
    write_scene(folder, scene)  # 16-bit TIFFs, exposure.txt, HDRImg.hdr
    code, out, _ = run(capsys, "--save_dir", tmp_path / "out", folder)
    assert code == 0 and "not aligned" in out
    loaded = load_scene(folder)
    inputs = torch.from_numpy(build_network_input(loaded.ldrs, loaded.exposures))[None]
    expected = reconstruct(load_model(CHECKPOINT).eval(), inputs)[0].permute(1, 2, 0).numpy()
    write_hdr(tmp_path / "expected.hdr", expected)  # the same RGBE rounding
    np.testing.assert_array_equal(read_hdr(tmp_path / "out" / "scene_0001.hdr"), read_hdr(tmp_path / "expected.hdr"))


def test_files_as_one_bracket_named_after_their_folder_or_name(tmp_path: Path, scene, capsys) -> None:
    files = write_pngs(tmp_path / "hall", scene.ldrs)
    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, "--save_dir", out_dir, "--no_align", "--stops", "-2", "0", "2", "--", *files[::-1])
    assert code == 0 and "0, 2, 4 stops, from --stops" in out
    code, _, _ = run(capsys, "--save_dir", out_dir, "--no_align", "--name", "x", *files, "--stops", "0", "2", "4")
    assert code == 0
    np.testing.assert_array_equal(read_hdr(out_dir / "hall.hdr"), read_hdr(out_dir / "x.hdr"))


def test_iso_and_fnumber_are_folded_in(tmp_path: Path, scene) -> None:
    # One shutter time; ISO 100 / 400 at f/4 and ISO 400 at f/2: 0, +2 and +4 stops.
    settings = {"z.jpg": (100, 4.0), "y.jpg": (400, 4.0), "x.jpg": (400, 2.0)}
    for (name, (iso, fnumber)), ldr in zip(settings.items(), scene.ldrs):
        write_jpeg(tmp_path / name, ldr, 1 / 100, iso=iso, fnumber=fnumber)
    found = find_bracket(tmp_path)
    assert [p.name for p in found.files] == list(settings)
    assert found.stops == pytest.approx((0.0, 2.0, 4.0), abs=1e-6)


# ---------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------

def static_bracket(size: tuple[int, int] = (72, 96), stops: Sequence[float] = (0.0, 2.0, 4.0)) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    radiance = render_scene(rng, size, stops).label
    return [expose(radiance, float(t), rng) for t in exposure_times(stops)]


def shifted(ldr: np.ndarray, dx: float, dy: float) -> np.ndarray:
    move = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    return cv2.warpAffine(ldr, move, ldr.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("ecc_sizes", [align.ECC_SIZES, (32, 64)], ids=["full", "downscaled"])
def test_align_recovers_known_shifts(monkeypatch: pytest.MonkeyPatch, ecc_sizes: tuple[int, ...]) -> None:
    monkeypatch.setattr(align, "ECC_SIZES", ecc_sizes)
    ldrs = static_bracket()
    moves = {0: (3.0, -2.0), 2: (-2.0, 1.5)}
    moved = [shifted(ldr, *moves[i]) if i in moves else ldr for i, ldr in enumerate(ldrs)]
    aligned, warps = align.align_bracket(moved, (0.0, 2.0, 4.0), reference=1)
    height, width = ldrs[0].shape[:2]
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], dtype=np.float64)
    for index, (dx, dy) in moves.items():
        warp, method = warps[index]
        assert method == "ecc"
        displacement = corners @ warp.T - corners[:, :2]  # where each corner is read from
        assert np.abs(displacement - [dx, dy]).max() < 1.0, (index, warp)
        inner = (slice(6, -6), slice(6, -6))
        assert np.abs(aligned[index][inner] - ldrs[index][inner]).mean() < 0.02
    assert warps[1][1] == "reference" and np.array_equal(aligned[1], ldrs[1])


def test_align_falls_back_to_mtb(monkeypatch: pytest.MonkeyPatch) -> None:
    ldrs = static_bracket()

    def no_convergence(*_: object, **__: object) -> np.ndarray:
        raise cv2.error("ECC did not converge")

    monkeypatch.setattr(align, "ecc_warp", no_convergence)
    warp, method = align.estimate_warp(ldrs[1], shifted(ldrs[0], 3, -2), 4.0, 1.0)
    assert method == "mtb"
    np.testing.assert_allclose(warp, [[1, 0, 3], [0, 1, -2]])


# ---------------------------------------------------------------------------
# Exposure counts, sizes, formats
# ---------------------------------------------------------------------------

def test_two_exposures_of_16_bit_tiffs(tmp_path: Path, capsys) -> None:
    ldrs = render_scene(np.random.default_rng(7), SIZE, (0.0, 3.0)).ldrs
    folder = tmp_path / "two"
    for index, ldr in enumerate(ldrs, start=1):
        write_ldr(folder / f"f{index}.tif", ldr, bit_depth=16)
    code, out, _ = run(capsys, "--save_dir", tmp_path / "out", folder, "--stops", "0", "3")
    assert code == 0 and "2 exposures" in out
    assert read_hdr(tmp_path / "out" / "two.hdr").shape == (*SIZE, 3)


def test_five_exposures_need_a_network_that_merges_five(tmp_path: Path, capsys) -> None:
    stops = (0.0, 1.0, 2.0, 3.0, 4.0)
    ldrs = render_scene(np.random.default_rng(8), SIZE, stops).ldrs
    folder = tmp_path / "five"
    for index, ldr in enumerate(ldrs, start=1):
        write_ldr(folder / f"f{index}.tif", ldr, bit_depth=8)
    (folder / "exposure.txt").write_text(" ".join(map(str, stops)))

    code, _, err = run(capsys, "--save_dir", tmp_path / "out", folder)  # embed_dim 12: 5 does not divide
    assert code == 2 and err.startswith("error: ") and "five" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()

    torch.manual_seed(0)
    five = tmp_path / "five_exposures.pth"
    save_model(five, SMNet(embed_dim=10, depths=(1,), num_heads=(2,)))
    code, out, _ = run(capsys, "--save_dir", tmp_path / "out", "--tile", "128", folder, checkpoint=five)
    assert code == 0 and "5 exposures" in out
    assert read_hdr(tmp_path / "out" / "five.hdr").shape == (*SIZE, 3)


# ---------------------------------------------------------------------------
# Unusable input: exit 2, one line naming the file, nothing written
# ---------------------------------------------------------------------------

def bad_unreadable(folder: Path, ldrs: np.ndarray) -> str:
    paths = write_pngs(folder, ldrs, (0, 2, 4))
    paths[1].write_bytes(b"not an image")
    return paths[1].name


def bad_unreadable_exif(folder: Path, ldrs: np.ndarray) -> str:
    for name, ldr, t in zip("abc", ldrs, (1 / 400, 1 / 100, 1 / 25)):
        write_jpeg(folder / f"{name}.jpg", ldr, t)
    (folder / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    return "b.jpg"


def bad_sizes(folder: Path, ldrs: np.ndarray) -> str:
    paths = write_pngs(folder, ldrs, (0, 2, 4))
    cv2.imwrite(str(paths[2]), cv2.imread(str(paths[2]))[:-1])
    return paths[2].name


def bad_equal_exposures(folder: Path, ldrs: np.ndarray) -> str:
    for name, ldr, t in zip("abc", ldrs, (1 / 400, 1 / 100, 1 / 100)):
        write_jpeg(folder / f"{name}.jpg", ldr, t)
    return "c.jpg"


def bad_single_frame(folder: Path, ldrs: np.ndarray) -> str:
    write_jpeg(folder / "only.jpg", ldrs[0], 1 / 100)
    return "only.jpg"


def bad_exif_without_exposure_time(folder: Path, ldrs: np.ndarray) -> str:
    write_jpeg(folder / "a.jpg", ldrs[0], 1 / 400)
    write_jpeg(folder / "b.jpg", ldrs[1], None, fnumber=4.0)
    write_jpeg(folder / "c.jpg", ldrs[2], 1 / 25)
    return "b.jpg"


def bad_exif_missing_in_one_frame(folder: Path, ldrs: np.ndarray) -> str:
    write_jpeg(folder / "a.jpg", ldrs[0], 1 / 400)
    write_pngs(folder, ldrs[1:2])  # input_1.png, no EXIF
    write_jpeg(folder / "c.jpg", ldrs[2], 1 / 25)
    return "input_1.png"


def bad_seven_frames(folder: Path, ldrs: np.ndarray) -> str:
    write_pngs(folder, [ldrs[0]] * 7, range(7))
    return folder.name


def bad_no_images(folder: Path, ldrs: np.ndarray) -> str:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("nothing here")
    return folder.name


def bad_unsorted_exposure_file(folder: Path, ldrs: np.ndarray) -> str:
    write_pngs(folder, ldrs, (4, 2, 0))
    return "exposure.txt"


@pytest.mark.parametrize("make_bad", [
    bad_unreadable, bad_unreadable_exif, bad_sizes, bad_equal_exposures, bad_single_frame,
    bad_exif_without_exposure_time, bad_exif_missing_in_one_frame, bad_seven_frames, bad_no_images,
    bad_unsorted_exposure_file,
], ids=lambda f: f.__name__[4:])
def test_unusable_bracket(tmp_path: Path, scene, capsys, make_bad) -> None:
    folder = tmp_path / "bracket"
    named = make_bad(folder, scene.ldrs)
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "--save_dir", out_dir, folder)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert not out_dir.exists()


def test_no_exposure_information_says_what_to_provide(tmp_path: Path, scene, capsys) -> None:
    write_pngs(tmp_path / "bracket", scene.ldrs)
    code, _, err = run(capsys, "--save_dir", tmp_path / "out", tmp_path / "bracket")
    assert code == 2 and err.count("\n") == 1
    assert all(word in err for word in ("--stops", "exposure.txt", "EXIF", "bracket"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, named", [
    (["--stops", "0", "2"], "--stops"),
    (["--stops", "0", "2", "2"], "input_3.png"),
    (["--name", "x", "--stops", "0", "1", "2"], "--name"),
])
def test_unusable_options(tmp_path: Path, scene, capsys, args: list[str], named: str) -> None:
    write_pngs(tmp_path / "a", scene.ldrs)
    write_pngs(tmp_path / "b", scene.ldrs)
    code, _, err = run(capsys, "--save_dir", tmp_path / "out", tmp_path / "a", tmp_path / "b", *args)
    assert code == 2 and err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_cannot_be_loaded_exits_1(tmp_path: Path, scene, capsys) -> None:
    write_pngs(tmp_path / "bracket", scene.ldrs, (0, 2, 4))
    code, _, err = run(capsys, "--save_dir", tmp_path / "out", tmp_path / "bracket",
                       checkpoint=tmp_path / "missing.pth")
    assert code == 1 and "missing.pth" in err


def test_bracket_error_is_a_value_error() -> None:
    assert issubclass(BracketError, ValueError)


# ---------------------------------------------------------------------------
# Outputs and tiling
# ---------------------------------------------------------------------------

def test_outputs_are_written_all_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hdr = np.random.default_rng(0).random((8, 12, 3), dtype=np.float32)

    def failing_png(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(predict, "write_png", failing_png)
    with pytest.raises(OSError, match="disk full"):
        predict.write_outputs(tmp_path, "scene", hdr)
    assert list(tmp_path.iterdir()) == []


def test_exr_output(tmp_path: Path) -> None:
    openexr = pytest.importorskip("OpenEXR")
    hdr = np.random.default_rng(0).random((8, 12, 3), dtype=np.float32)
    paths = predict.write_outputs(tmp_path, "scene", hdr, exr=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.exr", "scene.hdr", "scene.png"] == sorted(
        p.name for p in paths)
    with openexr.File(str(tmp_path / "scene.exr")) as exr:
        rgb = exr.channels()["RGB"].pixels
    assert rgb.dtype == np.float16
    np.testing.assert_array_equal(rgb, hdr.astype(np.float16))


def test_auto_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(tiling, "available_memory", lambda device: 16 << 30)  # 8 GiB budget
    assert tiling.auto_tile((1000, 1500), 60, cpu) == 0  # about 5 GB
    assert tiling.auto_tile((4000, 6000), 60, cpu) == 1024  # about 74 GB in one pass; 2048² needs 12.6 GB
    monkeypatch.setattr(tiling, "available_memory", lambda device: 64 << 30)
    assert tiling.auto_tile((4000, 6000), 60, cpu) == 2048
    monkeypatch.setattr(tiling, "available_memory", lambda device: 1 << 30)
    assert tiling.auto_tile((4000, 6000), 60, cpu) == 256


@pytest.mark.parametrize("tile, overlap", [("64", "16"), ("-1", "32"), ("256", "256")])
def test_tiles_the_settings_refuse_stop_the_parser(tmp_path: Path, capsys, tile: str, overlap: str) -> None:
    with pytest.raises(SystemExit) as raised:
        predict.parse_args(["--pretrained_model", str(CHECKPOINT), "--save_dir", str(tmp_path / "out"),
                            "--tile", tile, "--tile_overlap", overlap, str(tmp_path)])
    assert raised.value.code == 2 and f"--tile {tile}" in capsys.readouterr().err
