"""What a training run saves besides the weights, and how it comes back: the RNG states, the
per-epoch seeds that make a resumed epoch repeat exactly, and the run's history.

Every epoch reseeds the RNGs from (seed, epoch, rank), so a run killed at any moment and
resumed from ``last.pth`` trains the interrupted epoch exactly as the uninterrupted run would.
"""
from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible seed for every (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % 2**62


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options as plain values (paths as strings) for a checkpoint or a log."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


@dataclass
class RunState:
    """What a checkpoint carries besides the weights."""

    epoch: int = 0
    best_psnr_mu: float = -math.inf
    history: list[dict[str, float]] = field(default_factory=list)
