"""What tiled inference costs in quality and time: mean PSNR-μ and PSNR-l of one pass versus
tiles of each size, the change in dB, the mean absolute pixel difference and the time per scene.

    python -m benchmarks.bench_tiling                          # 3 generated 256×384 scenes, CPU
    python -m benchmarks.bench_tiling --dataset_dir data/Kalantari --device cuda --tile 256 512

Without ``--dataset_dir`` three test scenes of 256×384 are generated (seed 11) into a temporary
folder. The model is ``--pretrained_model`` (default ``pretrain_model/demo_smnet.pth``), or a
randomly initialised tiny SMNet when that file does not exist: its numbers then show only the
effect of tiling, not the network's quality.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from benchmarks.common import describe_machine, synchronize
from datasets import HDRFullImageDataset
from datasets.synthetic import make_dataset
from models.checkpoint import load_model
from evaluation.evaluate import EvaluationResult, evaluate_scenes
from models.inference import TEST_PAD_MULTIPLE, InferenceSettings, eval_mode, predict, resolve_amp
from models.registry import smnet_tiny
from utils.distributed import resolve_device

DEFAULT_CHECKPOINT = Path("pretrain_model/demo_smnet.pth")
GENERATED_SCENES, GENERATED_SIZE, GENERATED_SEED = 3, (256, 384), 11


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", type=Path, default=None,
                        help="dataset holding a Test split (default: generate 3 scenes of 256×384, seed 11)")
    parser.add_argument("--test_path", default="Test", help="split folder inside --dataset_dir")
    parser.add_argument("--pretrained_model", type=Path, default=DEFAULT_CHECKPOINT,
                        help="checkpoint (default: pretrain_model/demo_smnet.pth, else a random tiny SMNet)")
    parser.add_argument("--tile", type=int, nargs="+", default=[128, 192], help="tile sizes to compare")
    parser.add_argument("--tile_overlap", type=int, default=32)
    parser.add_argument("--pad_multiple", type=int, default=TEST_PAD_MULTIPLE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    args = parser.parse_args(argv)
    bad = [t for t in args.tile if not 0 <= args.tile_overlap < t]
    if bad:
        parser.error(f"--tile_overlap {args.tile_overlap} must be in [0, tile) for every tile (not {bad})")
    return args


def build_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, str]:
    if path.is_file():
        return load_model(path, device=device), str(path)
    torch.manual_seed(0)
    return (smnet_tiny().to(device),
            f"randomly initialised tiny SMNet ({path} not found: the numbers show the effect of tiling only)")


def run(model: torch.nn.Module, dataset: HDRFullImageDataset, device: torch.device, args: argparse.Namespace,
        amp: str | None, tile: int) -> tuple[EvaluationResult, dict[str, torch.Tensor], float]:
    """Evaluate every scene with ``tile`` (0: one pass); the predictions and the peak device memory in MiB."""
    predictions: dict[str, torch.Tensor] = {}

    def keep(sample: Mapping[str, Any], prediction: torch.Tensor) -> None:
        predictions[str(sample["scene"])] = prediction

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    settings = InferenceSettings(args.pad_multiple, tile, args.tile_overlap, amp)
    result = evaluate_scenes(model, dataset, device, settings, on_scene=keep)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return result, predictions, peak


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)  # as the scripts do (on the CPU: malloc keeps freed memory)
    amp, note = resolve_amp(args.amp, device)
    if note:
        print(f"note: {note}")
    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as tmp:
        dataset_dir = args.dataset_dir
        if dataset_dir is None:
            dataset_dir = make_dataset(Path(tmp), 0, GENERATED_SCENES, size=GENERATED_SIZE, seed=GENERATED_SEED)
            source = (f"{GENERATED_SCENES} generated scenes of {GENERATED_SIZE[0]}x{GENERATED_SIZE[1]} "
                      f"(seed {GENERATED_SEED})")
        else:
            source = str(dataset_dir / args.test_path)
        dataset = HDRFullImageDataset(dataset_dir, args.test_path, cache="memory")
        model, description = build_model(args.pretrained_model, device)
        print(f"machine: {describe_machine(device)}")
        print(f"model: {description}")
        print(f"data: {source}, {len(dataset)} scenes")
        print(f"padding multiple {args.pad_multiple}, tile overlap {args.tile_overlap}, amp {amp or 'fp32'}\n")

        with eval_mode(model):  # warm-up, untimed
            predict(model, torch.as_tensor(dataset[0]["input"]).unsqueeze(0), device,
                    InferenceSettings(args.pad_multiple, amp=amp))
            synchronize(device)

        base, base_predictions, base_peak = run(model, dataset, device, args, amp, tile=0)
        base_means = base.table.means()
        header = (f"{'setting':<16}{'PSNR-mu':>9}{'PSNR-l':>9}{'dPSNR-mu':>10}{'dPSNR-l':>9}"
                  f"{'mean|dpx|':>11}{'max|dpx|':>10}{'s/scene':>9}" + ("  peak MiB" if device.type == "cuda" else ""))
        print(header)
        print("-" * len(header))

        def line(name: str, result: EvaluationResult, predictions: dict[str, torch.Tensor], peak: float) -> None:
            means = result.table.means()
            diffs = [(predictions[s] - base_predictions[s]).abs() for s in base_predictions]
            mean_diff = sum(float(d.mean()) for d in diffs) / len(diffs)
            max_diff = max(float(d.max()) for d in diffs)
            print(f"{name:<16}{means['psnr_mu']:9.3f}{means['psnr_l']:9.3f}"
                  f"{means['psnr_mu'] - base_means['psnr_mu']:+10.4f}{means['psnr_l'] - base_means['psnr_l']:+9.4f}"
                  f"{mean_diff:11.2e}{max_diff:10.2e}{result.mean_seconds():9.3f}"
                  + (f"{peak:10.1f}" if device.type == "cuda" else ""))

        line("one pass", base, base_predictions, base_peak)
        for tile in args.tile:
            result, predictions, peak = run(model, dataset, device, args, amp, tile)
            line(f"tile {tile}", result, predictions, peak)


if __name__ == "__main__":
    main()
