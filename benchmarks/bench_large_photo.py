"""Seconds per megapixel of merging a large photo on this machine, one pass and tiled, and how
close ``predict.py``'s estimate from one timed tile comes.

    python -m benchmarks.bench_large_photo                        # 1080×1920 bracket, 2 threads
    python -m benchmarks.bench_large_photo --size 2000x3000 --models demo --repeats 3

The bracket is a generated scene (``datasets.synthetic.render_scene``, 3 exposures); the networks
are the demo checkpoint and the default SMNet (``models.registry.smnet``, random weights: only
the time matters). A 12–24 MP photo takes about the seconds per megapixel times its megapixels
(the forward is windowed, so its cost grows with the pixels).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import describe_machine
from datasets.preprocess import build_network_input
from datasets.synthetic import render_scene
from evaluation.merger import HDRMerger
from models.checkpoint import load_model
from models.inference import TEST_PAD_MULTIPLE, InferenceSettings
from models.registry import smnet

DEMO_CHECKPOINT = Path("pretrain_model/demo_smnet.pth")
STOPS = (0.0, 2.0, 4.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1080x1920", help="HxW of the generated bracket (default: %(default)s)")
    parser.add_argument("--models", nargs="+", choices=("demo", "default"), default=["demo", "default"])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--tile_overlap", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    return parser.parse_args(argv)


def network(name: str) -> torch.nn.Module:
    if name == "demo":
        return load_model(DEMO_CHECKPOINT)
    torch.manual_seed(0)
    return smnet()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    frames = render_scene(np.random.default_rng(0), (height, width), STOPS).ldrs
    inputs = torch.from_numpy(build_network_input(frames, STOPS))[None]
    megapixels = height * width / 1e6
    print(f"{describe_machine(torch.device('cpu'))}; {args.threads} threads; bracket {width}×{height} "
          f"({megapixels:.2f} MP, 3 exposures), median of {args.repeats}")
    print("| network | mode | seconds | s/MP | estimate from one tile |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        merger = HDRMerger(network(name), tile=0)
        for tile in (0, args.tile):
            settings = InferenceSettings(TEST_PAD_MULTIPLE, tile, args.tile_overlap)
            estimate = merger.estimate(inputs, settings)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                merger.merge_network_input(inputs, settings)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            mode = f"tiles {tile}, overlap {args.tile_overlap}" if tile else "one pass"
            print(f"| {name} | {mode} | {seconds:.1f} | {seconds / megapixels:.1f} | "
                  f"{estimate.seconds:.1f} s ({estimate.describe()}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
