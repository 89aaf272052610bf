"""Command-line options of ``train_phase1.py`` and ``train_phase2.py``.

Option names and defaults follow the released training scripts (docs/METHOD.md), so the paper's
commands work unchanged. A ``--preset`` replaces the defaults of a group of options (options
given explicitly on the command line always win): ``tiny`` makes a network and a schedule
small enough for a CPU run of a few minutes.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

from datasets.options import add_data_options
from models.registry import ARCHITECTURES
from training.losses import DEFAULT_LE_LAMBDA
from training.curriculum import GUIDING_METRICS
from utils.cli import HelpFormatter, OptionsFileParser, add_debug_option, add_device_options, add_flag, add_inert_options, check_options

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": dict(model="smnet_tiny", train_patch_size=64, batch_size=4, repeat=4, epochs=10, phase1_epochs=6,
                 metric_guided_interval=2, test_interval=2, save_interval=5, le_lambda=0.0, drop_path_rate=0.0),
}
"""Defaults replaced by ``--preset NAME``: the schedule, and the network by its name
(``models.registry``). ``paper`` is the released recipe (nothing replaced)."""

INERT_OPTIONS: dict[str, tuple[Any, str]] = {
    "patch_size": (256, "the released test patch size; evaluation runs on whole images, the crop is --train_patch_size"),
    "test_batch_size": (1, "test scenes are evaluated one at a time"),
    "test_num_workers": (1, "test scenes are read in the main process"),
    "log_interval": (100, "the loss is logged every epoch and shown live in the progress bar"),
    "momentum": (0.5, "the optimiser is Adam"),
    "lr_decay": (True, "the cosine schedule always runs, as in the released scripts"),
}
"""Released options that change nothing here (see ``utils.cli.add_inert_options``)."""


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _unit(value: float) -> bool:
    return 0.0 <= value <= 1.0


OPTION_RULES = {
    **{name: (_positive, "a positive whole number") for name in (
        "batch_size", "train_patch_size", "repeat", "epochs", "metric_guided_interval", "test_interval",
        "save_interval", "max_steps", "start_epoch", "embed_dim", "window_size", "depths", "num_heads")},
    "num_workers": (lambda v: v >= 0, "0 (read in the training process) or more worker processes"),
    "phase1_epochs": (lambda v: v >= 0, "0 or more epochs"),
    "lr": (_positive, "a positive finite learning rate"),
    "lr_min": (_non_negative, "a finite learning rate >= 0"),
    "max_mask_ratio": (_unit, "a mask ratio in [0, 1]"),
    "constant_mask_ratio": (_unit, "a mask ratio in [0, 1]"),
    "adl_drop_rate": (_unit, "a probability in [0, 1]"),
    "drop_path_rate": (lambda v: 0.0 <= v < 1.0, "a probability in [0, 1)"),
    **{name: (_non_negative, "a finite weight >= 0") for name in ("le_lambda", "linear_lambda")},
    "mask_temperature": (_finite, "a finite temperature"),
    "loss_temperature": (_finite, "a finite temperature"),
}
"""What each numeric option means, checked when the command line is parsed."""


def build_parser(phase: int) -> argparse.ArgumentParser:
    """The argument parser of one training phase (1: epochs 1–300, 2: epochs 301–400)."""
    parser = OptionsFileParser(
        description=f"SMHDR training, phase {phase}: " + (
            "plain reconstruction, no masking (epochs 1-300)." if phase == 1 else
            "semantic-masking curriculum from a phase-1 checkpoint (epochs 301-400)."),
        formatter_class=HelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                        help="replace the defaults of network size and schedule (tiny: a CPU run of minutes)")

    data = add_data_options(parser)
    data.add_argument("--train_patch_size", type=int, default=128, help="training crop size")
    data.add_argument("--repeat", type=int, default=100, help="passes over the training scenes per epoch")
    data.add_argument("--num_workers", type=int, default=8, help="DataLoader worker processes")

    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--epochs", type=int, default=400, help="last epoch of the whole recipe")
    schedule.add_argument("--phase1_epochs", type=int, default=300, help="last epoch of phase 1")
    schedule.add_argument("--start_epoch", type=int, default=None,
                          help="first epoch to train (default: after the resumed checkpoint's epoch, "
                               f"else {'1' if phase == 1 else 'phase1_epochs + 1'})")
    schedule.add_argument("--batch_size", type=int, default=8, help="batch size per process")
    schedule.add_argument("--lr", type=float, default=5e-4, help="initial (and phase-2 restart) learning rate")
    schedule.add_argument("--lr_min", type=float, default=5e-5, help="floor of the cosine schedule")
    schedule.add_argument("--max_mask_ratio", type=float, default=0.9, help="peak of the mask-ratio curriculum")
    schedule.add_argument("--constant_mask_ratio", type=float, default=0.75,
                          help="phase-2 mask ratio without the curriculum")
    add_flag(schedule, "--is_curriculum", True, "mask ratio rises then falls in phase 2 (else constant)")
    add_flag(schedule, "--is_mask", True, "mask the inputs in phase 2 (false: phase 2 trains without masking)")
    schedule.add_argument("--mask_choice", type=int, choices=(0, 1), default=1,
                          help="0: mask random pixels of the whole crop; 1: mask within the semantic segments")
    add_flag(schedule, "--is_guided_mask", True, "per-segment mask ratios from the per-segment metric")
    add_flag(schedule, "--is_guided_loss", True, "per-segment loss weights from the per-segment metric")
    schedule.add_argument("--metric_guided", choices=GUIDING_METRICS, default="psnr_mu",
                          help="per-segment metric of the metric-guided update (psnr_l: PSNR of linear values)")
    schedule.add_argument("--metric_guided_interval", type=int, default=5,
                          help="phase-1 epochs between metric-guided updates (every epoch in phase 2)")
    schedule.add_argument("--mask_temperature", type=float, default=0.05,
                          help="T of the mask ratios r_s = R·S·softmax(T·PSNR_s): positive masks easy segments more")
    schedule.add_argument("--loss_temperature", type=float, default=-0.1,
                          help="T of the loss weights w_s = S·softmax(T·PSNR_s): negative weighs hard segments more")

    loss = parser.add_argument_group("loss")
    loss.add_argument("--le_lambda", type=float, default=DEFAULT_LE_LAMBDA,
                      help="weight of the VGG-19 perceptual term (0 turns it off)")
    loss.add_argument("--linear_lambda", type=float, default=0.0,
                      help="weight of an L1 term on linear radiance, which weighs highlights as PSNR-l does "
                           "(an addition to the paper's loss; 0, the default, leaves it out)")
    loss.add_argument("--vgg_weights", type=Path, default=None,
                      help="ImageNet VGG-19 weights file (torchvision or timm); default: the local caches")

    net = parser.add_argument_group("network")
    net.add_argument("--model", choices=sorted(ARCHITECTURES), default="smnet",
                     help="the network by name: smnet (the released one) or smnet_tiny (the demo checkpoint's)")
    for name, kind, nargs in (("embed_dim", int, None), ("depths", int, "+"), ("num_heads", int, "+"),
                              ("window_size", int, None)):
        net.add_argument(f"--{name}", type=kind, nargs=nargs, default=None,
                         help=f"override the named network's {name} (default: that of --model)")
    net.add_argument("--reference_residual", action="store_true",
                     help="the network corrects the reference exposure's radiance instead of rebuilding it "
                          "(an addition; the released network rebuilds it)")
    net.add_argument("--drop_path_rate", type=float, default=0.1)
    net.add_argument("--adl_drop_rate", type=float, default=0.75,
                     help="probability that a mask block applies the mask map (else its importance map)")

    run = parser.add_argument_group("run")
    run.add_argument("--logdir", type=Path, default=Path(f"runs/phase{phase}"),
                     help="checkpoints, TensorBoard events and train.log; held by one run at a time "
                          "(<logdir>/.lock: a second run into it is refused)")
    run.add_argument("--resume", type=Path, default=None,
                     help="checkpoint (or run folder: its last.pth) to continue from (a phase-1 checkpoint for phase 2); "
                          "<logdir>/last.pth, when present, is used first unless --restart")
    run.add_argument("--restart", action="store_true",
                     help="start over instead of continuing <logdir>/last.pth; the previous run's checkpoints and "
                          "log are moved aside to <logdir>/replaced_<date-time>/, never overwritten")
    run.add_argument("--finetune_from", type=Path, default=None,
                     help="load these weights and train only the shallow extractor conv_first (5.28 %% of the "
                          "default network), as the paper adapts a model to another exposure count")
    add_flag(run, "--is_freeze", False,
             "the released fine-tuning: load --resume's weights, start at epoch 1 and train only conv_first.0 "
             "(0.26 %% of the default network)")
    add_flag(run, "--init_weights", False, "initialise a new network with the released normal(0, 0.02) weights")
    run.add_argument("--seed", type=int, default=1234)
    add_device_options(run, "auto, cpu, cuda, cuda:N (torchrun sets it per rank)")
    run.add_argument("--compile", action="store_true", help="torch.compile the network for training")
    run.add_argument("--test_interval", type=int, default=10, help="epochs between test-split evaluations")
    run.add_argument("--save_interval", type=int, default=50, help="epochs between kept epoch_NNNN.pth files")
    run.add_argument("--max_steps", type=int, default=None, help="stop each epoch after this many steps (smoke runs)")
    run.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_debug_option(parser)
    add_inert_options(parser.add_argument_group("released options without effect here"), INERT_OPTIONS)
    return parser


def parse_args(phase: int, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the options of one phase, the preset's defaults applied under the explicit ones."""
    parser = build_parser(phase)
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[known.preset])
    args = parser.parse_args(argv)
    args.phase = phase
    for name, value in ARCHITECTURES[args.model].items():  # what the named network fixes, unless overridden
        if getattr(args, name) is None:
            setattr(args, name, list(value) if isinstance(value, list) else value)
    check_options(parser, args, OPTION_RULES)
    if len(args.depths) != len(args.num_heads):
        parser.error(f"--depths {args.depths} and --num_heads {args.num_heads} differ in length")
    if any(args.embed_dim % heads for heads in args.num_heads):
        parser.error(f"--num_heads {args.num_heads} must divide --embed_dim {args.embed_dim}")
    if not 0 <= args.phase1_epochs <= args.epochs:
        parser.error(f"need 0 <= --phase1_epochs ({args.phase1_epochs}) <= --epochs ({args.epochs})")
    if args.lr_min > args.lr:
        parser.error(f"--lr_min {args.lr_min} is above --lr {args.lr}: the schedule falls from --lr to --lr_min")
    for name in ("logdir",):
        if getattr(args, name).exists() and not getattr(args, name).is_dir():
            parser.error(f"--{name} {getattr(args, name)} is a file, not a folder")
    return args


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """SMNet constructor options from parsed arguments (mask blocks always built)."""
    return dict(img_size=args.train_patch_size, embed_dim=args.embed_dim, depths=list(args.depths),
                num_heads=list(args.num_heads), window_size=args.window_size,
                drop_path_rate=args.drop_path_rate, is_mask=True, adl_drop_rate=args.adl_drop_rate,
                **({"reference_residual": True} if args.reference_residual else {}))
