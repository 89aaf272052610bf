"""Command-line options of the inference and metric settings, shared by ``test.py`` and
``predict.py``, and the typed settings they parse into."""
from __future__ import annotations

import argparse

import torch

from evaluation.merger import AUTO
from evaluation.metrics import DEFAULT_PEAK_LUMINANCE, SSIM_VARIANTS, MetricSettings, load_pycvvdp
from evaluation.regions import RegionSettings
from models.inference import TEST_PAD_MULTIPLE, InferenceSettings, resolve_amp
from utils.cli import UsageError
from utils.tonemap import DISPLAY_OPERATORS


def _tile_value(allow_auto: bool):
    def parse(value: str) -> int | str:
        if allow_auto and value == AUTO:
            return AUTO
        try:
            return int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a tile size in pixels, 0 (one pass)"
                                             f"{' or auto' if allow_auto else ''}, got {value!r}") from None
    return parse


def add_tile_options(group: argparse._ActionsContainer, allow_auto: bool = False) -> None:
    """``--tile`` (0 = one pass over the whole image, N = tiles of N pixels, and with
    ``allow_auto`` ``auto``, its default then) and ``--tile_overlap``: one meaning in every command."""
    group.add_argument("--tile", type=_tile_value(allow_auto), default=AUTO if allow_auto else 0,
                       help="tile size in pixels for tiled inference, 0 = one pass over the whole image"
                            + ("; auto = one pass when the estimated memory fits the device, else the largest of "
                               "2048/1024/512/256 that fits" if allow_auto else "")
                            + "; device memory then depends on the tile size only")
    group.add_argument("--tile_overlap", type=int, default=32, help="minimum overlap of neighbouring tiles")


def add_inference_options(group: argparse._ActionsContainer) -> None:
    """``--pad_multiple``, ``--tile`` and ``--tile_overlap`` (``--amp`` comes with ``--device``)."""
    group.add_argument("--pad_multiple", "--train_patch_size", dest="pad_multiple", type=int, default=TEST_PAD_MULTIPLE,
                       help="reflection padding multiple (of the image, or of each tile); 128 in the released protocol, "
                            "whose test script calls it --train_patch_size")
    add_tile_options(group)


def inference_settings(args: argparse.Namespace, device: torch.device) -> tuple[InferenceSettings, str | None]:
    """The inference settings the options ask for on ``device``, and a note when the precision
    had to change (fp16 on the CPU)."""
    amp, note = resolve_amp(args.amp, device)
    try:
        return InferenceSettings(args.pad_multiple, args.tile, args.tile_overlap, amp), note
    except ValueError as err:
        raise UsageError(f"--tile {args.tile} --tile_overlap {args.tile_overlap} --pad_multiple {args.pad_multiple}: "
                         f"{err}") from None


def add_metric_options(group: argparse._ActionsContainer) -> None:
    """``--ssim_variant``, ``--peak_luminance``, ``--no_pu21`` and ``--cvvdp``."""
    group.add_argument("--ssim_variant", choices=SSIM_VARIANTS, default="released",
                       help="released: zero-padded 'same' SSIM of the released script; matlab: valid region, 0-255")
    group.add_argument("--peak_luminance", type=float, default=DEFAULT_PEAK_LUMINANCE,
                       help="luminance in cd/m² that a label value of 1.0 stands for, used by the PU21 and "
                            "ColorVideoVDP columns (labels are relative)")
    group.add_argument("--no_pu21", action="store_true", help="skip the PU21-PSNR/PU21-SSIM columns")
    group.add_argument("--cvvdp", action="store_true", help="add the ColorVideoVDP column (JOD; slow)")


def metric_settings(args: argparse.Namespace) -> MetricSettings:
    """The metric settings the options ask for; the PU21 and ColorVideoVDP columns only when
    their package is installed (``load_pycvvdp`` logs a one-line note otherwise)."""
    wanted_pu21 = not args.no_pu21
    available = load_pycvvdp() is not None if (wanted_pu21 or args.cvvdp) else False
    try:
        return MetricSettings(args.ssim_variant, wanted_pu21 and available, args.cvvdp and available,
                              args.peak_luminance)
    except ValueError as err:
        raise UsageError(f"--peak_luminance: {err}") from None


def add_preview_option(group: argparse._ActionsContainer) -> None:
    """``--preview_operator``: the tone mapping of the PNG previews."""
    group.add_argument("--preview_operator", choices=DISPLAY_OPERATORS, default="reinhard",
                       help="tone mapping of the PNG previews")


def add_region_option(group: argparse._ActionsContainer) -> None:
    """``--region_metrics``: PSNR-μ / PSNR-l by region (clipped, moving, static), off by default."""
    group.add_argument("--region_metrics", action="store_true",
                       help="also score each scene by region: pixels the reference exposure clips, pixels that "
                            "moved between frames, and the static rest (docs/EVALUATION.md); adds columns to "
                            "metrics.csv, a 'region_metrics' entry to summary.json and, with --side_by_side, "
                            "a region panel")


def region_settings(args: argparse.Namespace) -> RegionSettings | None:
    """The region thresholds when ``--region_metrics`` is given, else None."""
    return RegionSettings() if args.region_metrics else None
