"""Command-line options that say where the scenes are and how a scene folder is laid out.

Defined once and shared by ``segmask/segment.py``, the training entry points and ``test.py``, so
the same flags mean the same files everywhere. Each option also accepts the released scripts'
spelling (``--exposure_file_name``, ``--ldr_folder_name``, ``--label_file_name``,
``--mask_npy_name``, ``--cache_choice``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from utils.cli import MapChoice

from .scene import SceneLayout

SPLIT_DEFAULTS = {"train": "Training", "test": "Test"}
RELEASED_CACHE_CHOICES = {0: "none", 1: "npy", 2: "memory"}


def non_empty_path(value: str) -> Path:
    """A path option's value; an empty one (``--dataset_dir ''``, an unset shell variable) is
    refused rather than taken for the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty; give a folder (an unset shell variable?)")
    return Path(value)


def add_data_options(parser: argparse.ArgumentParser, splits: Sequence[str] = ("train", "test"),
                     cache: bool = True) -> argparse._ArgumentGroup:
    """Add ``--dataset_dir``, one ``--<split>_path`` per split, the scene-layout options and
    (with ``cache``) ``--cache``; returns the group."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset_dir", type=non_empty_path, required=True,
                       help="dataset folder holding the split folders")
    for split in splits:
        group.add_argument(f"--{split}_path", default=SPLIT_DEFAULTS[split],
                           help=f"{split} split folder inside --dataset_dir")
    defaults = SceneLayout()
    group.add_argument("--ldr_pattern", default=defaults.ldr_pattern, help="glob of the LDR files in a scene")
    group.add_argument("--ldr_subdir", "--ldr_folder_name", dest="ldr_subdir", default=defaults.ldr_subdir,
                       help="sub-folder of each scene holding the LDR files (default: the scene folder)")
    group.add_argument("--exposure_file", "--exposure_file_name", dest="exposure_file",
                       default=defaults.exposure_file, help="exposure file name (one value in stops per LDR)")
    group.add_argument("--label_file", "--label_file_name", dest="label_file", default=defaults.label_file,
                       help="label file name (Radiance .hdr)")
    group.add_argument("--masks_file", "--mask_npy_name", dest="masks_file", default=defaults.masks_file,
                       help="segment map file name")
    group.add_argument("--released_8bit_scaling", action="store_true",
                       help="divide 8-bit LDR files by 2^16 as the released reader does (default: by 255); only to "
                            "reproduce the released checkpoints' numbers on 8-bit data exactly")
    if cache:
        group.add_argument("--cache", choices=("none", "memory", "npy"), default="npy",
                           help="decoded-scene cache (npy: memory-mapped files in <scene>/.cache/, shared by "
                                "training and test.py; memory: in this process)")
        group.add_argument("--cache_choice", dest="cache", type=int, action=MapChoice, mapping=RELEASED_CACHE_CHOICES,
                           help="the released spelling of --cache: 0 none, 1 on disk (npy), 2 in memory")
    return group


def scene_layout(args: argparse.Namespace) -> SceneLayout:
    """The scene layout the parsed data options describe, checked (``SceneLayout.check``: a
    SceneError naming the options when one file would play two parts)."""
    layout = SceneLayout(ldr_pattern=args.ldr_pattern, ldr_subdir=args.ldr_subdir, exposure_file=args.exposure_file,
                         label_file=args.label_file, masks_file=args.masks_file,
                         released_8bit_scaling=args.released_8bit_scaling)
    layout.check()
    return layout


def cache_mode(args: argparse.Namespace) -> str | None:
    """The ``cache`` argument of the datasets (None without a cache)."""
    return None if args.cache == "none" else args.cache
