"""SMHDR training, phase 1: plain reconstruction without masking (epochs 1-300).

    python train_phase1.py --dataset_dir data/Kalantari --logdir runs/phase1

See `python train_phase1.py --help` and training/trainer.py.
"""
import sys

from training.trainer import main

if __name__ == "__main__":
    sys.exit(main(phase=1))
