"""Where a training checkpoint's curriculum puts its weight: the mean loss weight w_s and mask
ratio r_s of the training pixels in each region (clipped, moving, static; ``evaluation.regions``).

The guided loss weights hard segments more; this shows how much of that lands on the pixels the
reference exposure already gets right (the static region) and how much on the clipped and moving
ones, with each region's share of the pixels.

    python -m benchmarks.curriculum_by_region --checkpoint runs/phase2/last.pth --dataset_dir data/real
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datasets import HDRFullImageDataset
from evaluation.regions import REGIONS, sample_region_map
from models.checkpoint import read_checkpoint
from training.curriculum import SegmentTables, segment_positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint (with its tables)")
    parser.add_argument("--dataset_dir", type=Path, required=True)
    parser.add_argument("--train_path", default="Training")
    args = parser.parse_args()
    saved = read_checkpoint(args.checkpoint)
    if "tables" not in saved:
        raise SystemExit(f"{args.checkpoint} holds no segment tables (an exported or released checkpoint)")
    scenes = HDRFullImageDataset(args.dataset_dir, args.train_path, with_masks=True)
    tables = SegmentTables(saved["tables"]["ids"])
    tables.load_state_dict(saved["tables"])
    sums = {name: np.zeros(3) for name in REGIONS}  # pixels, weight sum, ratio sum
    for sample in scenes:
        regions = sample_region_map(sample)
        positions = segment_positions(tables.ids, sample["segments"]).numpy()
        weight, ratio = tables.weight.numpy()[positions], tables.ratio.numpy()[positions]
        for code, name in enumerate(REGIONS):
            inside = regions == code
            sums[name] += (inside.sum(), weight[inside].sum(), ratio[inside].sum())
    total = sum(s[0] for s in sums.values())
    print(f"{args.checkpoint} (epoch {saved.get('epoch')}), {len(scenes)} training scenes of {args.dataset_dir}")
    print("region    pixel share  mean loss weight  mean mask ratio")
    for name, (pixels, weight, ratio) in sums.items():
        if pixels:
            print(f"{name:8s}  {pixels / total:11.3f}  {weight / pixels:16.3f}  {ratio / pixels:15.3f}")
    print(f"all       {1.0:11.3f}  {sum(s[1] for s in sums.values()) / total:16.3f}  "
          f"{sum(s[2] for s in sums.values()) / total:15.3f}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
