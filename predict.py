"""An HDR image from each exposure bracket of your own photos (no label, no metrics).

    python predict.py --pretrained_model pretrain_model/stage2/Kal.pth --save_dir out photos/bracket1
    python predict.py --pretrained_model pretrain_model/stage2/Kal.pth --save_dir out IMG_1.JPG IMG_2.JPG IMG_3.JPG

See `python predict.py --help` and evaluation/predict.py.
"""
import sys

from evaluation.predict import main

if __name__ == "__main__":
    sys.exit(main())
