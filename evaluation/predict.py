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
``datasets.align``). Outputs per bracket: ``<name>.hdr`` (linear RGB, as
``test.py`` writes), ``<name>.png`` (tone-mapped preview) and with ``--exr`` ``<name>.exr``
(half float); each scene's files are written atomically, together.

Exit codes: 0 done, 1 the checkpoint could not be loaded or an output could not be written (a
full disk), 2 unusable input or options (one line ``error: ...`` naming the file or option).
Outputs are plain file names inside ``--save_dir`` and never replace an input. Every input is checked for frames and exposures
before the first is processed; a frame that fails to decode stops the run there (exit 2),
keeping the complete outputs of the brackets already done.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.align import MOTION_MODELS, align_bracket, warp_frame
from datasets.bracket import EXPOSURE_FILE, BracketSource, find_bracket, load_bracket
from datasets.preprocess import build_network_input
from datasets.response import BracketResponse, Response, bracket_response, response_option, save_response
from evaluation.options import add_preview_option
from models.channel_attention import channel_attention_heads
from models.checkpoint import load_model
from models.inference import TEST_PAD_MULTIPLE, InferenceSettings, eval_mode, predict, resolve_amp
from utils.atomic_io import atomic_path
from utils.cli import EXIT_OK, RunFailed, UsageError, add_debug_option, add_device_options, describe_os_error, run_cli
from utils.distributed import resolve_device
from utils.image_io import write_hdr, write_png
from utils.safe_paths import check_writable_folder, file_name_in, refuse_overwriting
from utils.tonemap import tonemap_for_display

BYTES_PER_PIXEL_PER_CHANNEL = 50
"""Peak memory of a float32 one-pass forward per (padded) pixel and embedding channel: about
3 KB per pixel for the released width of 60, measured on the CPU."""
AUTO_TILES = (2048, 1024, 512, 256)
"""Tile sizes ``--tile 0`` picks from, largest first (multiples of the padding multiple)."""
HOST_MEMORY_SHARE, DEVICE_MEMORY_SHARE = 0.5, 0.8
"""Share of the available host / free accelerator memory one forward pass may take."""
OPENEXR_REQUIREMENT = "openexr"


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
    inference.add_argument("--tile", type=int, default=0,
                           help="tile size in pixels; 0 = automatic: one pass when the estimated memory fits "
                                "the device, else the largest of 2048/1024/512/256 that fits (default: %(default)s)")
    inference.add_argument("--tile_overlap", type=int, default=32,
                           help="minimum overlap of neighbouring tiles (default: %(default)s)")

    outputs = parser.add_argument_group("outputs")
    add_preview_option(outputs)
    outputs.add_argument("--exr", action="store_true",
                         help="also write <name>.exr (half float; needs the openexr package)")
    outputs.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    try:  # the settings' own checks, on the smallest tile --tile 0 may pick
        InferenceSettings(TEST_PAD_MULTIPLE, args.tile or min(AUTO_TILES), args.tile_overlap)
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


def check_exposure_count(model: torch.nn.Module, source: BracketSource) -> None:
    """Raise UsageError when the network cannot merge this many exposures (its width must divide)."""
    try:
        channel_attention_heads(model.embed_dim, len(source.files), model.ca_heads_per_exposure)
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

def available_memory(device: torch.device) -> int:
    """Free accelerator memory, or the host memory available to a new allocation (bytes)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 8 << 30


def auto_tile(size: tuple[int, int], embed_dim: int, device: torch.device) -> int:
    """``--tile 0``: 0 (one pass) when a forward over the padded image fits the memory budget,
    else the largest tile of ``AUTO_TILES`` that fits (the smallest one when none does).

    Budget: half of the available host memory on the CPU, 80 % of the free memory on CUDA.
    The estimate, ``BYTES_PER_PIXEL_PER_CHANNEL`` × pixels × width, is that of float32; mixed
    precision only adds headroom.
    """
    share = DEVICE_MEMORY_SHARE if device.type == "cuda" else HOST_MEMORY_SHARE
    budget = share * available_memory(device)
    padded = [-(-side // TEST_PAD_MULTIPLE) * TEST_PAD_MULTIPLE for side in size]
    if padded[0] * padded[1] * embed_dim * BYTES_PER_PIXEL_PER_CHANNEL <= budget:
        return 0
    return next((t for t in AUTO_TILES if t * t * embed_dim * BYTES_PER_PIXEL_PER_CHANNEL <= budget), AUTO_TILES[-1])


def linearise_and_align(frames: np.ndarray, stops: Sequence[float], reference: int, response: str | Response | None,
                        benchmark_folder: bool, align: bool, motion: str = "euclidean"
                        ) -> tuple[np.ndarray, BracketResponse, str]:
    """Frames as the network expects them: linearised with the bracket's camera response
    (``datasets.response.bracket_response``) and re-encoded with gamma 2.2, then, with ``align``,
    registered to the reference (on the re-encoded frames, which ``align_bracket`` expects). A
    response estimated from the frames is estimated again on frames registered with the first
    estimate, which constrain it better, and kept when they agree better; the registration is then
    found again with it, so that the saved response given as a file reproduces the result. Returns
    the frames, the response chosen and how the frames were aligned."""
    chosen = bracket_response(response, frames, stops, benchmark_folder)
    if align and chosen.estimated:
        _, warps = align_bracket(chosen.response.to_gamma(frames), stops, reference, motion)
        registered = np.stack([warp_frame(frame, warp) for frame, (warp, _) in zip(frames, warps)])
        again = bracket_response(response, registered, stops, benchmark_folder)
        chosen = again if again.better_than(chosen) else chosen
    ldrs = chosen.response.to_gamma(frames)
    if not align:
        return ldrs, chosen, "not aligned"
    ldrs, warps = align_bracket(ldrs, stops, reference, motion)
    return ldrs, chosen, "aligned (" + ", ".join(method for _, method in warps if method != "reference") + ")"


def reconstruct_bracket(model: torch.nn.Module, ldrs: np.ndarray, stops: Sequence[float], device: torch.device,
                        settings: InferenceSettings) -> np.ndarray:
    """The network's H×W×3 float32 linear HDR image for frames ordered shortest exposure first."""
    inputs = torch.from_numpy(build_network_input(ldrs, stops))[None]
    with eval_mode(model):
        prediction = predict(model, inputs, device, settings)
    return prediction[0].permute(1, 2, 0).contiguous().numpy()


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------

def write_exr(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write linear RGB (H×W×3) as a half-float OpenEXR file (ZIP compression)."""
    import OpenEXR

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    try:
        with OpenEXR.File(header, {"RGB": np.ascontiguousarray(rgb, dtype=np.float16)}) as exr:
            exr.write(str(path))
    except RuntimeError as err:  # OpenEXR reports a failed write (a full disk) this way
        full = "no space left" in str(err).lower()
        raise OSError(errno.ENOSPC if full else errno.EIO, str(err).splitlines()[0], str(path)) from None


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

def process(source: BracketSource, model: torch.nn.Module, device: torch.device, amp: str | None,
            args: argparse.Namespace) -> str:
    """Read, linearise, align, reconstruct and write one bracket; returns the line reported for it."""
    start = time.perf_counter()
    align = args.align if args.align is not None else not source.from_exposure_file
    ldrs, chosen, alignment = linearise_and_align(load_bracket(source).ldrs, source.stops, source.reference_index,
                                                  args.response, source.from_exposure_file, align, args.align_motion)
    if chosen.note:
        tqdm.write(f"note: {source.name}: {chosen.note}")
    height, width = ldrs.shape[1:3]
    tile = args.tile or auto_tile((height, width), model.embed_dim, device)
    network_start = time.perf_counter()
    hdr = reconstruct_bracket(model, ldrs, source.stops, device,
                              InferenceSettings(TEST_PAD_MULTIPLE, tile, args.tile_overlap, amp))
    network_seconds = time.perf_counter() - network_start
    try:
        write_outputs(args.save_dir, source.name, hdr, args.preview_operator, args.exr)
    except OSError as err:
        raise RunFailed(f"--save_dir {args.save_dir}: cannot write the outputs of {source.name}: "
                        f"{describe_os_error(err)}") from None
    if args.save_response is not None:
        try:
            save_response(args.save_response, chosen.response)
        except OSError as err:
            raise RunFailed(f"--save_response {args.save_response}: cannot write the response: "
                            f"{describe_os_error(err)}") from None
    stops = ", ".join(f"{stop:g}" for stop in source.stops)
    return (f"{source.name}: {width}×{height}, {len(source.files)} exposures ({stops} stops, from "
            f"{source.exposure_source}), {alignment}, response {chosen.label}, "
            f"{f'tiles of {tile}' if tile else 'one pass'}: "
            f"{time.perf_counter() - start:.2f} s (network {network_seconds:.2f} s)")


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
    device = resolve_device(args.device)
    amp, amp_note = resolve_amp(args.amp, device)
    if amp_note:
        print(f"note: {amp_note}")
    model = load_model(args.pretrained_model, device=device)
    for source in sources:
        check_exposure_count(model, source)
    check_outputs(args, sources)
    for source in tqdm(sources, desc="predict", unit="scene", disable=args.no_progress):
        tqdm.write(process(source, model, device, amp, args))
    print(f"outputs in {args.save_dir}")
    return EXIT_OK

if __name__ == "__main__":
    sys.exit(main())
