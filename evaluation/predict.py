"""The prediction command (``predict.py``): an HDR image from each of a user's own exposure
brackets, with no label and no metrics.

    python predict.py --pretrained_model pretrain_model/stage2/Kal.pth --save_dir out photos/hall photos/yard
    python predict.py --pretrained_model pretrain_model/stage2/Kal.pth --save_dir out --name hall IMG_1.JPG IMG_2.JPG

Each INPUT folder is one bracket (one output each); a list of image files is one bracket. The
exposures come from ``--stops``, the folder's ``exposure.txt`` or the files' EXIF (see
``datasets.bracket``), which also turns the frames upright as their EXIF orientation says. Each
frame is linearised with the camera's response and re-encoded with gamma 2.2, as the network
expects (``--response``, by default estimated from the bracket, see ``datasets.response``).
Hand-held brackets are registered to the middle exposure first (``--align``, see
``datasets.align``). The merge itself is ``evaluation.merger.HDRMerger``'s. Outputs per
bracket: ``<name>.hdr`` (linear RGB, as ``test.py`` writes), ``<name>.png`` (tone-mapped preview)
and with ``--exr`` ``<name>.exr`` (half float); each scene's files are written atomically,
together. ``summary.json`` records, per bracket done, its files, exposures, the response, the
alignment, the tiling and the seconds. Before a large or tiled image, a line says how long it
should take (from one timed tile), and a progress bar follows its tiles.

Exit codes: 0 done, 1 the checkpoint could not be loaded or an output could not be written (a
full disk), 2 unusable input or options (one line ``error: ...`` naming the file or option).
Outputs are plain file names inside ``--save_dir`` and never replace an input. Every input is checked for frames and exposures
before the first is processed; a frame that fails to decode stops the run there (exit 2),
keeping the complete outputs of the brackets already done.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.align import MOTION_MODELS
from datasets.bracket import EXPOSURE_FILE, BracketSource, find_bracket, load_bracket
from datasets.preprocess import build_network_input
from datasets.response import Response, response_option, save_response
from evaluation.merger import AUTO, HDRMerger, MergeResult
from evaluation.options import add_preview_option, add_tile_options
from models.inference import TEST_PAD_MULTIPLE, InferenceSettings
from models.tiling import AUTO_TILES, tile_count
from utils.atomic_io import atomic_path, write_text_atomically
from utils.cli import (
    EXIT_OK,
    RunFailed,
    UsageError,
    add_debug_option,
    add_device_options,
    describe_os_error,
    run_cli,
)
from utils.distributed import resolve_device
from utils.image_io import OPENEXR_REQUIREMENT, write_exr, write_hdr, write_png
from utils.safe_paths import check_writable_folder, file_name_in, refuse_overwriting
from utils.tonemap import tonemap_for_display

SUMMARY_FILE = "summary.json"
"""What was done for every bracket, in ``--save_dir``."""
LARGE_PHOTO_PIXELS = 4_000_000
"""Images from this size (or split in several tiles) get a time estimate before they start."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Reconstruct an HDR image from each exposure bracket of your own photos.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="bracket folders (one output each), or the image files of one bracket "
                             "(TIFF, PNG, JPEG; 2 to 6 exposures)")
    parser.add_argument("--pretrained_model", required=True, type=Path, help="checkpoint file")
    parser.add_argument("--save_dir", type=Path, default=Path("results"), help="output folder (default: %(default)s)")
    parser.add_argument("--name", default=None,
                        help="output name of a single bracket (default: its folder's name)")

    bracket = parser.add_argument_group("exposures and alignment")
    bracket.add_argument("--stops", type=float, nargs="+", default=None, metavar="S",
                         help="exposure of each file in sorted-name order, in stops (EV); only differences "
                              "matter. Default: the folder's exposure.txt, else the files' EXIF. Give it after "
                              "the INPUTs, or end its values with --")
    bracket.add_argument("--align", dest="align", action="store_const", const=True, default=None,
                         help="register every frame to the middle exposure with a global transform "
                              "(default: on, except for folders with an exposure.txt)")
    bracket.add_argument("--no_align", dest="align", action="store_const", const=False,
                         help="use the frames as they are (tripod shots, pre-aligned benchmark scenes)")
    bracket.add_argument("--align_motion", choices=tuple(MOTION_MODELS), default="euclidean",
                         help="global motion model of --align (default: %(default)s)")
    bracket.add_argument("--response", default=None, metavar="auto|gamma|srgb|FILE",
                         help="camera response each frame is linearised with before it is re-encoded with "
                              "gamma 2.2, as the network expects: auto = estimated from the bracket (sRGB "
                              "when the estimate is unreliable), gamma = frames used as they are, srgb, or "
                              "a curve FILE (see --save_response). Default: auto, except gamma for folders "
                              "with an exposure.txt")
    bracket.add_argument("--save_response", type=Path, default=None, metavar="FILE",
                         help="write the response used for the bracket (one bracket only) to FILE: 256 "
                              "rows of text, or a NumPy array for a .npy name")

    inference = parser.add_argument_group("inference")
    add_device_options(inference)
    add_tile_options(inference, allow_auto=True)

    outputs = parser.add_argument_group("outputs")
    add_preview_option(outputs)
    outputs.add_argument("--exr", action="store_true",
                         help="also write <name>.exr (half float; needs the openexr package)")
    outputs.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    try:  # the settings' own checks, on the smallest tile --tile auto may pick
        InferenceSettings(TEST_PAD_MULTIPLE, min(AUTO_TILES) if args.tile == AUTO else args.tile, args.tile_overlap)
    except ValueError as err:
        parser.error(f"--tile {args.tile} --tile_overlap {args.tile_overlap}: {err}")
    return args


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

def find_brackets(inputs: Sequence[Path], stops: Sequence[float] | None, name: str | None) -> list[BracketSource]:
    """One bracket per folder, or one bracket of all the files; output names must not clash."""
    for path in inputs:
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
    folders = [p for p in inputs if p.is_dir()]
    if folders and len(folders) < len(inputs):
        raise UsageError(f"{folders[0]}: give either bracket folders or the image files of one bracket, not both")
    if folders and name and len(folders) > 1:
        raise UsageError("--name: names a single bracket, but several folders were given")
    sources = [find_bracket(folder, stops, name) for folder in folders] if folders else [
        find_bracket(inputs, stops, name)]
    seen: dict[str, Path] = {}
    for source in sources:
        if source.name in seen:
            raise UsageError(f"{source.files[0].parent}: its output name {source.name!r} is also that of "
                             f"{seen[source.name]}; rename a folder")
        seen[source.name] = source.files[0].parent
    return sources


def check_exposure_count(merger: HDRMerger, source: BracketSource) -> None:
    """Raise UsageError when the network cannot merge this many exposures (its width must divide)."""
    try:
        merger.check_exposure_count(len(source.files))
    except ValueError as err:
        raise UsageError(f"{source.files[0].parent}: this checkpoint cannot merge the bracket: {err}") from None


def check_outputs(args: argparse.Namespace, sources: Sequence[BracketSource]) -> None:
    """Before the first output: every output name is a plain file name inside --save_dir, no
    output is one of the inputs (a frame, an exposure file, the checkpoint), and --save_dir can
    be written."""
    inputs = [args.pretrained_model]
    if args.name is not None:
        file_name_in(args.save_dir, args.name, "--name")
    for source in sources:
        file_name_in(args.save_dir, source.name, "the output name")
        folder = source.files[0].parent
        inputs += [*source.files, *([folder / EXPOSURE_FILE] if (folder / EXPOSURE_FILE).is_file() else [])]
    targets = [path for source in sources for path in output_paths(args.save_dir, source.name, args.exr)]
    targets.append(args.save_dir / SUMMARY_FILE)
    if args.save_response is not None:
        if len(sources) > 1:
            raise UsageError(f"--save_response: writes the response of one bracket, but {len(sources)} were given")
        targets.append(args.save_response)
        inputs += [args.response.path] if isinstance(args.response, Response) and args.response.path else []
        check_writable_folder(args.save_response.parent, "--save_response")
    refuse_overwriting(targets, inputs, how=f"--save_dir {args.save_dir}" + (f" --name {args.name}" if args.name else ""))
    check_writable_folder(args.save_dir, "--save_dir")


def require_openexr() -> None:
    try:
        import OpenEXR  # noqa: F401
    except ImportError:
        raise UsageError(f"--exr: needs the {OPENEXR_REQUIREMENT} package "
                         f"(pip install {OPENEXR_REQUIREMENT})") from None


# ---------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------

def reconstruct_bracket(model: torch.nn.Module, ldrs: np.ndarray, stops: Sequence[float], device: torch.device,
                        settings: InferenceSettings) -> np.ndarray:
    """The network's H×W×3 float32 linear HDR image for frames ordered shortest exposure first."""
    inputs = torch.from_numpy(build_network_input(ldrs, stops))[None]
    prediction = HDRMerger.from_model(model, device, settings).merge_network_input(inputs)
    return prediction[0].permute(1, 2, 0).contiguous().numpy()


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------

def output_paths(save_dir: Path, name: str, exr: bool) -> list[Path]:
    suffixes = (".hdr", ".png", ".exr") if exr else (".hdr", ".png")
    return [save_dir / f"{name}{suffix}" for suffix in suffixes]


def write_outputs(save_dir: Path, name: str, hdr: np.ndarray, operator: str = "reinhard",
                  exr: bool = False) -> list[Path]:
    """Write ``<name>.hdr``, the ``<name>.png`` preview and optionally ``<name>.exr``, all or none:
    each goes to a temporary file first, and they replace their targets only once all are written."""
    paths = output_paths(save_dir, name, exr)
    writers = {".hdr": write_hdr, ".exr": write_exr,
               ".png": lambda path, image: write_png(path, tonemap_for_display(image, operator))}
    with contextlib.ExitStack() as stack:
        for path in paths:
            writers[path.suffix](stack.enter_context(atomic_path(path)), hdr)
    return paths


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def response_record(option: str | Response | None, source: BracketSource, result: MergeResult) -> dict[str, object]:
    """The response part of a bracket's summary: what was asked (auto, gamma, srgb or file), what
    was used, and the note when it fell back."""
    if isinstance(option, Response):
        asked = "file"
    else:
        asked = option or ("gamma" if source.from_exposure_file else "auto")
    return {"option": asked, "file": str(option.path) if isinstance(option, Response) and option.path else None,
            "used": result.response.response.name, "label": result.response.label,
            "note": result.response.note or None}


def bracket_record(source: BracketSource, result: MergeResult, option: str | Response | None,
                   seconds: float, outputs: Sequence[Path]) -> dict[str, object]:
    """One bracket's entry of summary.json."""
    height, width = result.hdr.shape[:2]
    settings = result.settings
    return {
        "name": source.name, "width": width, "height": height,
        "files": [str(path) for path in source.files],
        "stops": list(source.stops), "stops_from": source.exposure_source,
        "response": response_record(option, source, result),
        "alignment": result.alignment,
        "tiling": {"tile": settings.tile, "overlap": settings.tile_overlap if settings.tile else 0,
                   "tiles": tile_count((height, width), settings.tile, settings.tile_overlap),
                   "mode": settings.describe()["mode"], "amp": settings.amp or "fp32"},
        "seconds": {"total": round(seconds, 3), "network": round(result.network_seconds, 3)},
        "outputs": [path.name for path in outputs],
    }


def write_summary(args: argparse.Namespace, brackets: Sequence[dict[str, object]]) -> None:
    """``<save_dir>/summary.json`` with the brackets done so far, written atomically."""
    summary = {"checkpoint": str(args.pretrained_model), "save_dir": str(args.save_dir), "brackets": list(brackets)}
    try:
        write_text_atomically(args.save_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    except OSError as err:
        raise RunFailed(f"--save_dir {args.save_dir}: cannot write {SUMMARY_FILE}: {describe_os_error(err)}") from None


def merge_with_progress(merger: HDRMerger, name: str, ldrs: np.ndarray, stops: Sequence[float],
                        settings: InferenceSettings, progress: bool) -> torch.Tensor:
    """The network's output for one bracket; for a large or tiled image, a line with the expected
    time first (one tile timed), and a progress bar over the tiles (unless ``progress`` is off)."""
    inputs = torch.from_numpy(build_network_input(ldrs, stops))[None]
    height, width = ldrs.shape[1:3]
    tiles = tile_count((height, width), settings.tile, settings.tile_overlap)
    if tiles > 1 or height * width >= LARGE_PHOTO_PIXELS:
        tqdm.write(f"{name}: {width}×{height}, expect {merger.estimate(inputs, settings).describe()}")
    with tqdm(total=tiles, desc=name, unit="tile", disable=not progress or tiles == 1, leave=False) as bar:
        return merger.merge_network_input(inputs, settings, on_tile=bar.update)


def process(source: BracketSource, merger: HDRMerger, args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    """Read, linearise, align, reconstruct and write one bracket; returns the line reported for
    it and its summary entry."""
    start = time.perf_counter()
    prepared = merger.prepare(load_bracket(source).ldrs, source.stops, args.response, args.align,
                              args.align_motion, source.from_exposure_file)
    chosen = prepared.response
    if chosen.note:
        tqdm.write(f"note: {source.name}: {chosen.note}")
    height, width = prepared.ldrs.shape[1:3]
    settings = merger.settings_for((height, width))
    network_start = time.perf_counter()
    output = merge_with_progress(merger, source.name, prepared.ldrs, source.stops, settings, not args.no_progress)
    network_seconds = time.perf_counter() - network_start
    result = MergeResult(output[0].permute(1, 2, 0).contiguous().numpy(), chosen, prepared.alignment, settings,
                         network_seconds)
    try:
        outputs = write_outputs(args.save_dir, source.name, result.hdr, args.preview_operator, args.exr)
    except OSError as err:
        raise RunFailed(f"--save_dir {args.save_dir}: cannot write the outputs of {source.name}: "
                        f"{describe_os_error(err)}") from None
    if args.save_response is not None:
        try:
            save_response(args.save_response, chosen.response)
        except OSError as err:
            raise RunFailed(f"--save_response {args.save_response}: cannot write the response: "
                            f"{describe_os_error(err)}") from None
    seconds = time.perf_counter() - start
    stops = ", ".join(f"{stop:g}" for stop in source.stops)
    tile = settings.tile
    line = (f"{source.name}: {width}×{height}, {len(source.files)} exposures ({stops} stops, from "
            f"{source.exposure_source}), {prepared.alignment}, response {chosen.label}, "
            f"{f'tiles of {tile}' if tile else 'one pass'}: "
            f"{seconds:.2f} s (network {network_seconds:.2f} s)")
    return line, bracket_record(source, result, args.response, seconds, outputs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the prediction; returns the exit code (0 ok, 1 the checkpoint failed, 2 unusable input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="note: %(message)s")
    return run_cli(lambda: predict_all(args), args.debug)


def predict_all(args: argparse.Namespace) -> int:
    """Check every input, then reconstruct and write every bracket; errors raise (see ``main``)."""
    if args.exr:
        require_openexr()
    if args.save_dir.exists() and not args.save_dir.is_dir():
        raise UsageError(f"--save_dir {args.save_dir}: exists and is not a folder")
    sources = find_brackets(args.inputs, args.stops, args.name)
    args.response = response_option(args.response)
    merger = HDRMerger(args.pretrained_model, resolve_device(args.device), args.amp, args.tile,
                       args.tile_overlap)
    if merger.amp_note:
        print(f"note: {merger.amp_note}")
    for source in sources:
        check_exposure_count(merger, source)
    check_outputs(args, sources)
    done: list[dict[str, object]] = []
    for source in tqdm(sources, desc="predict", unit="scene", disable=args.no_progress):
        line, record = process(source, merger, args)
        done.append(record)
        write_summary(args, done)
        tqdm.write(line)
    print(f"outputs in {args.save_dir}")
    return EXIT_OK

if __name__ == "__main__":
    sys.exit(main())
