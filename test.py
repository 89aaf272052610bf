"""Evaluate SMNet checkpoints on a test split with the released protocol, write the
reconstructions, per-scene metrics and a summary, and optionally the classical baselines.

Default protocol (the released test script's): each scene's input is padded by reflection at
the bottom and right to a multiple of 128, run through the network in one pass (eval mode, no
mask map), clamped to [0, 1] and cropped back; metrics are plain means over scenes.

    python test.py --dataset_dir data/Kalantari --pretrained_model pretrain_model/stage2/Kal.pth \\
                   --save_dir results/kalantari
    python test.py --dataset_dir data/Kalantari --pretrained_model checkpoints/ --baselines \\
                   --tile 512 --tile_overlap 64 --amp bf16 --side_by_side

Outputs in ``--save_dir`` (one sub-folder per checkpoint when ``--pretrained_model`` is a folder):
``<scene>.hdr`` (linear RGB), ``<scene>.png`` (tone-mapped preview), optionally
``<scene>_side_by_side.png``, ``metrics.csv`` (per scene), ``summary.json`` (means, checkpoint,
protocol, SSIM variant, device, time per scene); with ``--baselines`` also ``baselines.csv``
(mean metrics of the network(s) and of each baseline) and ``baselines/<name>/`` in save_dir.
"""
import sys

from evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
