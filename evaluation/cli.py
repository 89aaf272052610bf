"""The evaluation command (``test.py``): evaluate SMNet checkpoints on a test split with the
released protocol, write the reconstructions, per-scene metrics and a summary, and optionally
the classical baselines. ``python test.py --help`` lists the options; docs/EVALUATION.md
describes the protocol and the outputs.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from datasets import HDRFullImageDataset, find_ldr_files
from datasets.scene import scene_input_files
from datasets.options import add_data_options, cache_mode, scene_layout
from evaluation.evaluate import BASELINE_TITLES, BASELINES, EvaluationResult, evaluate_baselines, evaluate_scenes
from evaluation.metrics import MetricSettings
from evaluation.options import (
    add_inference_options,
    add_metric_options,
    add_preview_option,
    add_region_option,
    inference_settings,
    metric_settings,
    region_settings,
)
from evaluation.outputs import SceneOutputWriter, list_checkpoints, output_folders
from evaluation.regions import RegionSettings, format_region_means, region_summary
from evaluation.tables import METHOD_KEY, comparison_rows, format_table, means_with_seconds, write_json, write_rows_csv
from models.checkpoint import CheckpointError, load_model
from utils.cli import (
    EXIT_FAILED_CHECKPOINT,
    HelpFormatter,
    UsageError,
    add_debug_option,
    run_cli,
    add_device_options,
    add_inert_options,
    inert_notes,
)
from utils.distributed import resolve_device
from utils.safe_paths import check_writable_folder, refuse_overwriting


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate SMNet checkpoints on a test split (released protocol by default).",
        formatter_class=HelpFormatter)
    data = add_data_options(parser, splits=("train", "test"))
    data.add_argument("--num_exposures", type=int, default=None,
                      help="exposures every scene must have (default: whatever each scene holds)")

    model = parser.add_argument_group("model and inference")
    model.add_argument("--pretrained_model", required=True, type=Path,
                       help="checkpoint file (released or project format), or a folder: every *.pth/*.pt/*.tar "
                            "inside is evaluated into its own sub-folder of --save_dir")
    add_device_options(model)
    add_inference_options(model)

    metrics = parser.add_argument_group("metrics")
    add_metric_options(metrics)
    metrics.add_argument("--baselines", action="store_true",
                         help="also evaluate the reference exposure alone and OpenCV's Debevec merge")
    add_region_option(metrics)

    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--save_dir", type=Path, default=Path("results"), help="output folder")
    outputs.add_argument("--no_save_images", action="store_true", help="write only metrics.csv and summary.json")
    add_preview_option(outputs)
    outputs.add_argument("--log_dir", "--logdir", dest="log_dir", type=Path, default=None,
                         help="also append the printed results to <log_dir>/test.log")
    outputs.add_argument("--side_by_side", action="store_true",
                         help="also write <scene>_side_by_side.png: reference LDR | prediction | label | error")
    outputs.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_option(parser)
    add_inert_options(parser.add_argument_group("released options without effect here"), INERT_OPTIONS)
    return parser.parse_args(argv)


INERT_OPTIONS: dict[str, tuple[object, str]] = {
    "patch_size": (256, "whole images are evaluated in one pass, or in --tile tiles"),
    "test_batch_size": (1, "scenes are evaluated one at a time"),
    "test_num_workers": (1, "scenes are read in the main process"),
    "save_results": (True, "images are written unless --no_save_images"),
}
"""Released options of test.py that change nothing here (``--train_path`` is accepted too)."""


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def open_dataset(args: argparse.Namespace) -> HDRFullImageDataset:
    """The test split, every scene checked to hold ``--num_exposures`` exposures if given. Scenes
    without a label are reconstructed and written but get no metrics."""
    layout = scene_layout(args)
    dataset = HDRFullImageDataset(args.dataset_dir, args.test_path, with_masks=False, cache=cache_mode(args),
                                  layout=layout, require_label=False)
    if args.num_exposures is not None:
        for scene_dir in dataset.scene_dirs:
            count = len(find_ldr_files(scene_dir, layout))
            if count != args.num_exposures:
                raise UsageError(f"scene {scene_dir}: {count} exposures, but --num_exposures {args.num_exposures}")
    for _ in dataset.scenes(progress=not args.no_progress):  # a broken file stops the run before any output
        pass
    return dataset


def run_baselines(args: argparse.Namespace, dataset: HDRFullImageDataset, metrics: MetricSettings,
                  regions: RegionSettings | None = None) -> dict[str, EvaluationResult]:
    """Evaluate the classical baselines; images go to ``<save_dir>/baselines/<name>/``."""
    writers = {name: SceneOutputWriter(args.save_dir / "baselines" / name, args.preview_operator,
                                       args.side_by_side, not args.no_save_images, regions=regions)
               for name in BASELINES}
    results = evaluate_baselines(dataset, BASELINES, metrics, progress=not args.no_progress,
                                 on_scene=lambda name, sample, pred: writers[name](sample, pred), regions=regions)
    for name, result in results.items():
        result.write_csv(args.save_dir / "baselines" / name / "metrics.csv")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit code (0 ok, 1 a checkpoint failed, 2 unusable input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="note: %(message)s")
    for note in inert_notes(args, INERT_OPTIONS):
        print(note)
    return run_cli(lambda: evaluate(args), args.debug)


def planned_outputs(args: argparse.Namespace, dataset: HDRFullImageDataset, folders: Mapping[Path, Path]
                    ) -> list[Path]:
    """Every file this run may write: per output folder the scenes' images and the tables, the
    baselines' folders and tables, and the test log."""
    out_dirs = list(folders.values()) + ([args.save_dir / "baselines" / name for name in BASELINES]
                                         if args.baselines else [])
    targets = [args.save_dir / "baselines.csv", args.save_dir / "checkpoints.csv"]
    for out_dir in out_dirs:
        writer = SceneOutputWriter(out_dir)
        targets += [out_dir / "metrics.csv", out_dir / "summary.json"]
        targets += [path for scene in dataset.scene_names for path in writer.paths(scene).values()]
    if args.log_dir is not None:
        targets.append(args.log_dir / "test.log")
    return targets


def check_outputs(args: argparse.Namespace, dataset: HDRFullImageDataset, folders: Mapping[Path, Path],
                  checkpoints: Sequence[Path]) -> None:
    """Before the first output: no output is one of the run's inputs (a scene's files, a
    checkpoint), whatever --save_dir or --log_dir say, and the output folders can be written."""
    inputs = [path for scene_dir in dataset.scene_dirs for path in scene_input_files(scene_dir, dataset.layout)]
    refuse_overwriting(planned_outputs(args, dataset, folders), [*inputs, *checkpoints],
                       how=f"--save_dir {args.save_dir}" + (f" / --log_dir {args.log_dir}" if args.log_dir else ""))
    check_writable_folder(args.save_dir, "--save_dir")
    if args.log_dir is not None:
        check_writable_folder(args.log_dir, "--log_dir")


def evaluate(args: argparse.Namespace) -> int:
    """The evaluation of parsed options (see ``main``); unusable options or data raise before
    anything is written."""
    if args.save_dir.exists() and not args.save_dir.is_dir():
        raise UsageError(f"--save_dir {args.save_dir} is a file, not a folder")
    if args.log_dir is not None and args.log_dir.exists() and not args.log_dir.is_dir():
        raise UsageError(f"--log_dir {args.log_dir} is a file, not a folder")
    checkpoints = list_checkpoints(args.pretrained_model)
    device = resolve_device(args.device)
    inference, amp_note = inference_settings(args, device)
    metrics = metric_settings(args)
    dataset = open_dataset(args)
    if amp_note:
        print(f"note: {amp_note}")

    folders = output_folders(checkpoints, args.save_dir, from_folder=args.pretrained_model.is_dir())
    check_outputs(args, dataset, folders, checkpoints)
    protocol = inference.describe()
    common: dict[str, Any] = dict(
        dataset_dir=args.dataset_dir.resolve(), split=args.test_path, protocol=protocol, metric_settings=metrics,
        device=describe_device(device), torch=torch.__version__)
    from utils.run_lock import run_lock

    with run_lock(args.save_dir, "--save_dir") as lock:  # another live run into --save_dir: exit 2, nothing written
        if lock.note:
            print(lock.note)
        return _evaluate_into_locked_folder(args, checkpoints, dataset, folders, device, inference, metrics,
                                            protocol, common)


def _evaluate_into_locked_folder(args: argparse.Namespace, checkpoints: Sequence[Path], dataset: HDRFullImageDataset,
                                 folders: Mapping[Path, Path], device: torch.device, inference: Any,
                                 metrics: MetricSettings, protocol: Mapping[str, Any], common: dict[str, Any]) -> int:
    """The writing part of ``evaluate``, run while ``--save_dir`` is locked (``utils/run_lock.py``)."""
    regions = region_settings(args)
    summaries: dict[Path, dict[str, Any]] = {}
    network_means: dict[str, dict[str, float]] = {}
    region_means: dict[str, dict[str, dict[str, float]]] = {}
    failed: list[Path] = []
    # tables of an earlier run into the same folders go first: a run that fails halfway must not
    # leave new images next to old numbers
    for stale in [args.save_dir / "baselines.csv", args.save_dir / "checkpoints.csv",
                  *(folder / name for folder in folders.values() for name in ("metrics.csv", "summary.json"))]:
        if stale.is_file():
            stale.unlink()
    for checkpoint in checkpoints:
        out_dir = folders[checkpoint]
        try:
            model = load_model(checkpoint, device=device)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(checkpoint)
            continue
        writer = SceneOutputWriter(out_dir, args.preview_operator, args.side_by_side, not args.no_save_images,
                                   regions=regions)
        try:
            result = evaluate_scenes(model, dataset, device, inference, metrics, progress=not args.no_progress,
                                     on_scene=writer, regions=regions)
        except BaseException:
            print(f"note: stopped after writing {writer.written} scene(s) to {out_dir}; no tables were written there",
                  file=sys.stderr)
            raise
        result.write_csv(out_dir / "metrics.csv")
        unlabelled = sorted(set(result.seconds) - {row["scene"] for row in result.table.rows})
        summaries[out_dir] = result.table.summary(
            checkpoint=checkpoint.resolve(), **common, seconds_per_scene=result.seconds,
            mean_seconds_per_scene=result.mean_seconds(), num_reconstructed=len(result.seconds),
            num_unlabelled=len(unlabelled), unlabelled_scenes=unlabelled)
        method = checkpoint.name if len(checkpoints) > 1 else "network"
        if regions is not None:
            region_means[method] = result.region_means()
            summaries[out_dir]["region_metrics"] = region_summary(regions, region_means[method])
        write_json(out_dir / "summary.json", summaries[out_dir])
        network_means[method] = means_with_seconds(result.table.means(), result.seconds.values())
        print(f"\ncheckpoint {checkpoint} ({len(result.table)} scenes, {describe_device(device)}, "
              f"{protocol['mode']}, SSIM {metrics.ssim_variant})")
        if len(result.table):
            print(result.table.format())
        if regions is not None and len(result.table):
            print(f"\nby region (mean over scenes with the region; shares of pixels and of squared mu-law error)\n"
                  f"{format_region_means({method: region_means[method]})}")
        if unlabelled:
            print(f"{len(unlabelled)} of {len(result.seconds)} scenes have no label ({args.label_file}): "
                  f"reconstructed and written, left out of the metrics")
        print(f"mean time per scene: {result.mean_seconds():.3f} s; outputs in {out_dir}")
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            with open(args.log_dir / "test.log", "a") as log:
                log.write(f"checkpoint {checkpoint} ({protocol['mode']})\n{result.table.format()}\n\n")
                if regions is not None and len(result.table):
                    log.write(f"by region\n{format_region_means({method: region_means[method]})}\n\n")
        del model
    if failed and not summaries:
        return EXIT_FAILED_CHECKPOINT

    comparison = dict(network_means)
    if args.baselines:
        baselines = run_baselines(args, dataset, metrics, regions)
        baseline_means = {name: means_with_seconds(r.table.means(), r.seconds.values())
                          for name, r in baselines.items()}
        comparison.update({BASELINE_TITLES[name]: means for name, means in baseline_means.items()})
        for out_dir, summary in summaries.items():
            summary["baselines"] = {BASELINE_TITLES[name]: means for name, means in baseline_means.items()}
            if regions is not None:
                summary["region_metrics"]["baselines"] = {BASELINE_TITLES[name]: r.region_means()
                                                          for name, r in baselines.items()}
            write_json(out_dir / "summary.json", summary)
        if regions is not None:
            region_means.update({BASELINE_TITLES[name]: r.region_means() for name, r in baselines.items()})
        write_rows_csv(args.save_dir / "baselines.csv", comparison_rows(comparison), METHOD_KEY)
    elif len(checkpoints) > 1:
        write_rows_csv(args.save_dir / "checkpoints.csv", comparison_rows(comparison), METHOD_KEY)
    if len(comparison) > 1:
        print("\nmean over scenes (seconds: reconstruction time per scene)")
        print(format_table(comparison_rows(comparison), METHOD_KEY, with_mean=False))
    if len(region_means) > 1:
        print(f"\nby region, mean over scenes with the region\n{format_region_means(region_means)}")
    if failed:
        print(f"\n{len(failed)} checkpoint(s) could not be loaded: {', '.join(map(str, failed))}", file=sys.stderr)
        return EXIT_FAILED_CHECKPOINT
    return 0

