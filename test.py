"""Evaluate SMNet checkpoints on a test split with the released protocol, write the
reconstructions, per-scene metrics and a summary, and optionally the classical baselines.

Default protocol (the released test script's): each scene's input is padded by reflection at
the bottom and right to a multiple of 128, run through the network in one pass (eval mode, no
mask map), clamped to [0, 1] and cropped back; metrics are plain means over scenes.

    python test.py --dataset_dir data/Kalantari --pretrained_model pretrain_model/best.pth \\
                   --save_dir results/kalantari
    python test.py --dataset_dir data/Kalantari --pretrained_model checkpoints/ --baselines \\
                   --tile 512 --tile_overlap 64 --amp bf16 --side_by_side

Outputs in ``--save_dir`` (one sub-folder per checkpoint when ``--pretrained_model`` is a folder):
``<scene>.hdr`` (linear RGB), ``<scene>.png`` (tone-mapped preview), optionally
``<scene>_side_by_side.png``, ``metrics.csv`` (per scene), ``summary.json`` (means, checkpoint,
protocol, SSIM variant, device, time per scene); with ``--baselines`` also ``baselines.csv``
(mean metrics of the network(s) and of each baseline) and ``baselines/<name>/`` in save_dir.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from datasets import HDRFullImageDataset, SceneLayout, find_ldr_files
from models.checkpoint import CheckpointError, load_model
from models.inference import TEST_PAD_MULTIPLE, resolve_amp
from utils.distributed import resolve_device
from utils.evaluation import BASELINE_TITLES, BASELINES, EvaluationResult, evaluate_baselines, evaluate_scenes
from utils.metrics import DEFAULT_PEAK_LUMINANCE, SSIM_VARIANTS, load_pycvvdp
from utils.outputs import (
    SceneOutputWriter,
    comparison_rows,
    describe_protocol,
    format_rows,
    list_checkpoints,
    means_with_seconds,
    output_folders,
    write_json,
    write_rows_csv,
)
from utils.tonemap import DISPLAY_OPERATORS

EXIT_FAILED_CHECKPOINT = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """Options or inputs that cannot be used; reported without a traceback."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate SMNet checkpoints on a test split (released protocol by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_dir", required=True, type=Path, help="dataset folder holding the split folder")
    data.add_argument("--test_path", default="Test", help="split folder name inside --dataset_dir")
    data.add_argument("--num_exposures", type=int, default=None,
                      help="exposures every scene must have (default: whatever each scene holds)")
    data.add_argument("--ldr_pattern", default=SceneLayout.ldr_pattern, help="glob of the LDR files in a scene")
    data.add_argument("--ldr_subdir", default=None, help="sub-folder of each scene holding the LDR files")
    data.add_argument("--exposure_file", default=SceneLayout.exposure_file, help="exposure file name (stops)")
    data.add_argument("--label_file", default=SceneLayout.label_file, help="label file name (Radiance .hdr)")
    data.add_argument("--cache", choices=("none", "memory", "npy"), default="npy",
                      help="decoded-scene cache (npy: <scene>/.cache/, shared with training)")

    model = parser.add_argument_group("model and inference")
    model.add_argument("--pretrained_model", required=True, type=Path,
                       help="checkpoint file (released or project format), or a folder: every *.pth/*.pt/*.tar "
                            "inside is evaluated into its own sub-folder of --save_dir")
    model.add_argument("--patch_size", type=int, default=128,
                       help="accepted for compatibility with the released command line; unused (any size works)")
    model.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    model.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                       help="autocast precision; fp16 only on CUDA (falls back to float32 on the CPU)")
    model.add_argument("--pad_multiple", type=int, default=TEST_PAD_MULTIPLE,
                       help="reflection padding multiple (of the image, or of each tile); 128 in the released protocol")
    model.add_argument("--tile", type=int, default=0,
                       help="tile size in pixels for tiled inference (0 = one pass over the whole image); "
                            "device memory then depends on the tile size only")
    model.add_argument("--tile_overlap", type=int, default=32, help="minimum overlap of neighbouring tiles")

    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--ssim_variant", choices=SSIM_VARIANTS, default="released",
                         help="released: zero-padded 'same' SSIM of the released script; matlab: valid region, 0-255")
    metrics.add_argument("--peak_luminance", type=float, default=DEFAULT_PEAK_LUMINANCE,
                         help="luminance in cd/m² that a label value of 1.0 stands for, used by the PU21 and "
                              "ColorVideoVDP columns (labels are relative)")
    metrics.add_argument("--no_pu21", action="store_true", help="skip the PU21-PSNR/PU21-SSIM columns")
    metrics.add_argument("--cvvdp", action="store_true", help="add the ColorVideoVDP column (JOD; slow)")
    metrics.add_argument("--baselines", action="store_true",
                         help="also evaluate the reference exposure alone and OpenCV's Debevec merge")

    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--save_dir", type=Path, default=Path("results"), help="output folder")
    outputs.add_argument("--no_save_images", action="store_true", help="write only metrics.csv and summary.json")
    outputs.add_argument("--preview_operator", choices=DISPLAY_OPERATORS, default="reinhard",
                         help="tone mapping of the PNG previews")
    outputs.add_argument("--side_by_side", action="store_true",
                         help="also write <scene>_side_by_side.png: reference LDR | prediction | label | error")
    outputs.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.tile < 0 or (args.tile and not 0 <= args.tile_overlap < args.tile):
        parser.error(f"--tile must be >= 0 and --tile_overlap in [0, tile) (got {args.tile}, {args.tile_overlap})")
    if args.pad_multiple < 1:
        parser.error("--pad_multiple must be positive")
    return args


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def open_dataset(args: argparse.Namespace) -> HDRFullImageDataset:
    """The labelled test split, every scene checked to hold ``--num_exposures`` exposures if given."""
    layout = SceneLayout(ldr_pattern=args.ldr_pattern, ldr_subdir=args.ldr_subdir,
                         exposure_file=args.exposure_file, label_file=args.label_file)
    dataset = HDRFullImageDataset(args.dataset_dir, args.test_path, with_masks=False,
                                  cache=None if args.cache == "none" else args.cache, layout=layout)
    if args.num_exposures is not None:
        for scene_dir in dataset.scene_dirs:
            count = len(find_ldr_files(scene_dir, layout))
            if count != args.num_exposures:
                raise UsageError(f"scene {scene_dir}: {count} exposures, but --num_exposures {args.num_exposures}")
    return dataset


def run_baselines(args: argparse.Namespace, dataset: HDRFullImageDataset, with_pu21: bool
                  ) -> dict[str, EvaluationResult]:
    """Evaluate the classical baselines; images go to ``<save_dir>/baselines/<name>/``."""
    writers = {name: SceneOutputWriter(args.save_dir / "baselines" / name, args.preview_operator,
                                       args.side_by_side, not args.no_save_images) for name in BASELINES}
    results = evaluate_baselines(dataset, BASELINES, args.ssim_variant, with_pu21, args.cvvdp,
                                 args.peak_luminance, progress=not args.no_progress,
                                 on_scene=lambda name, sample, pred: writers[name](sample, pred))
    for name, result in results.items():
        result.table.write_csv(args.save_dir / "baselines" / name / "metrics.csv")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit code (0 ok, 1 a checkpoint failed, 2 unusable input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="note: %(message)s")
    try:
        checkpoints = list_checkpoints(args.pretrained_model)
        device = resolve_device(args.device)
        dataset = open_dataset(args)
    except ValueError as err:  # unusable options or inputs: CheckpointListError, UsageError, SceneError, --device
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    amp, amp_note = resolve_amp(args.amp, device)
    if amp_note:
        print(f"note: {amp_note}")
    with_pu21 = not args.no_pu21
    if (with_pu21 or args.cvvdp) and load_pycvvdp() is None:  # logs its own one-line note
        with_pu21 = False
    with_cvvdp = args.cvvdp and load_pycvvdp() is not None

    folders = output_folders(checkpoints, args.save_dir, from_folder=args.pretrained_model.is_dir())
    protocol = describe_protocol(args.pad_multiple, args.tile, args.tile_overlap, amp)
    common: dict[str, Any] = dict(
        dataset_dir=args.dataset_dir.resolve(), split=args.test_path, protocol=protocol,
        ssim_variant=args.ssim_variant, peak_luminance=args.peak_luminance, pu21=with_pu21, cvvdp=with_cvvdp,
        device=describe_device(device), torch=torch.__version__)

    summaries: dict[Path, dict[str, Any]] = {}
    network_means: dict[str, dict[str, float]] = {}
    failed: list[Path] = []
    for checkpoint in checkpoints:
        out_dir = folders[checkpoint]
        try:
            model = load_model(checkpoint, device=device)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(checkpoint)
            continue
        writer = SceneOutputWriter(out_dir, args.preview_operator, args.side_by_side, not args.no_save_images)
        result = evaluate_scenes(model, dataset, device, args.pad_multiple, amp, args.ssim_variant, with_pu21,
                                 with_cvvdp, args.peak_luminance, args.tile, args.tile_overlap,
                                 progress=not args.no_progress, on_scene=writer)
        result.table.write_csv(out_dir / "metrics.csv")
        summaries[out_dir] = result.table.summary(
            checkpoint=checkpoint.resolve(), **common, seconds_per_scene=result.seconds,
            mean_seconds_per_scene=result.mean_seconds())
        write_json(out_dir / "summary.json", summaries[out_dir])
        network_means[checkpoint.name if len(checkpoints) > 1 else "network"] = means_with_seconds(
            result.table.means(), result.seconds.values())
        print(f"\ncheckpoint {checkpoint} ({len(result.table)} scenes, {describe_device(device)}, "
              f"{protocol['mode']}, SSIM {args.ssim_variant})")
        print(result.table.format())
        print(f"mean time per scene: {result.mean_seconds():.3f} s; outputs in {out_dir}")
        del model
    if failed and not summaries:
        return EXIT_FAILED_CHECKPOINT

    comparison = dict(network_means)
    if args.baselines:
        baselines = run_baselines(args, dataset, with_pu21)
        baseline_means = {name: means_with_seconds(r.table.means(), r.seconds.values())
                          for name, r in baselines.items()}
        comparison.update({BASELINE_TITLES[name]: means for name, means in baseline_means.items()})
        for out_dir, summary in summaries.items():
            summary["baselines"] = {BASELINE_TITLES[name]: means for name, means in baseline_means.items()}
            write_json(out_dir / "summary.json", summary)
        write_rows_csv(args.save_dir / "baselines.csv", comparison_rows(comparison))
    elif len(checkpoints) > 1:
        write_rows_csv(args.save_dir / "checkpoints.csv", comparison_rows(comparison))
    if len(comparison) > 1:
        print("\nmean over scenes (seconds: reconstruction time per scene)")
        print(format_rows(comparison_rows(comparison)))
    if failed:
        print(f"\n{len(failed)} checkpoint(s) could not be loaded: {', '.join(map(str, failed))}", file=sys.stderr)
        return EXIT_FAILED_CHECKPOINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
