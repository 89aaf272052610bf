"""Time the mask map of the masked training step (training/masking.py) on a training-sized batch.

    python -m benchmarks.bench_masking
"""
from __future__ import annotations

import torch

from benchmarks.common import median_time, voronoi_segments
from training.masking import build_mask_map

NUM_IDS = 5000


def benchmark_mask_map(batch: int = 4, size: int = 128, segments_per_crop: int = 20, repeats: int = 100,
                       device: str = "cpu") -> float:
    """Median seconds to build one mask map for ``batch`` crops of size×size pixels with about
    ``segments_per_crop`` segments each (irregular random shapes, IDs from a 5000-ID table)."""
    generator = torch.Generator(device=device).manual_seed(0)
    segments = voronoi_segments(batch, size, segments_per_crop, NUM_IDS, generator)
    ratio_table = torch.rand(NUM_IDS, generator=generator, device=device) * 1.2
    return median_time(lambda: build_mask_map(segments, ratio_table, generator), torch.device(device),
                       repeats=repeats, warmup=5)


if __name__ == "__main__":
    for batch in (4, 8):
        seconds = benchmark_mask_map(batch=batch)
        print(f"mask map, batch {batch}, 128×128, ~20 segments per crop, {torch.get_num_threads()} threads: "
              f"{seconds * 1e3:.2f} ms")
