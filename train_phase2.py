"""SMHDR training, phase 2: the semantic-masking curriculum from a phase-1 checkpoint (epochs 301-400).

    python train_phase2.py --dataset_dir data/Kalantari --logdir runs/phase2 --resume runs/phase1/last.pth

See `python train_phase2.py --help` and training/trainer.py.
"""
import sys

from training.trainer import main

if __name__ == "__main__":
    sys.exit(main(phase=2))
