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
from typing import Any, Mapping, Sequence

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


def is_released_checkpoint(data: Mapping[str, Any]) -> bool:
    """A checkpoint written by the released training scripts: ``state_dict``, ``optimizer`` and
    the released scheduler's ``lr_scheduler``, but not the project's ``config``."""
    return "lr_scheduler" in data and "state_dict" in data and "config" not in data


def parameter_order(state_dict: Mapping[str, torch.Tensor], parameter_names: set[str]) -> list[str]:
    """The order in which the network that wrote ``state_dict`` listed its parameters.

    A state dict lists every module's parameters, then its buffers, then its children, and
    ``named_parameters()`` does the same without the buffers: so the parameters' order is the
    state dict's key order with the buffers (and DataParallel's ``module.`` prefix) taken out.
    """
    names = [key.removeprefix("module.").removeprefix("_orig_mod.") for key in state_dict]
    return [name for name in names if name in parameter_names]


def optimizer_state_by_name(saved: Mapping[str, Any], saved_order: Sequence[str],
                            optimizer: torch.optim.Optimizer, names: Mapping[torch.nn.Parameter, str]
                            ) -> tuple[dict[str, Any], list[str]]:
    """Re-key a saved single-group optimizer state (its parameters in ``saved_order``) onto
    ``optimizer``'s parameters by name (``names``: parameter → name). Returns the state dict to
    load and the names whose state was dropped (no counterpart or another shape)."""
    saved_group = saved["param_groups"][0]
    if len(saved["param_groups"]) != 1 or len(saved_group["params"]) != len(saved_order):
        raise ValueError(f"the saved optimiser holds {sum(len(g['params']) for g in saved['param_groups'])} "
                         f"parameters, the saved network {len(saved_order)}")
    saved_states = {saved_order[i]: saved["state"][index] for i, index in enumerate(saved_group["params"])
                    if index in saved["state"]}
    group = optimizer.param_groups[0]
    state: dict[int, Any] = {}
    dropped = []
    for index, parameter in enumerate(group["params"]):
        entry = saved_states.pop(names[parameter], None)
        if entry is None:
            continue
        if any(torch.is_tensor(v) and v.dim() > 0 and v.shape != parameter.shape for v in entry.values()):
            dropped.append(names[parameter])
            continue
        state[index] = entry
    dropped.extend(saved_states)
    restored_group = {**saved_group, "params": list(range(len(group["params"])))}
    return {"state": state, "param_groups": [restored_group]}, dropped
