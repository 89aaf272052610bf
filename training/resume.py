"""What a training run saves besides the weights, and how it comes back: the RNG states, the
per-epoch seeds that make a resumed epoch repeat exactly, and the run's history.

Every epoch reseeds the RNGs from (seed, epoch, rank), so a run killed at any moment and
resumed from ``last.pth`` trains the interrupted epoch exactly as the uninterrupted run would.

A preempted run (SIGTERM, or SIGUSR1 as SLURM's ``--signal`` sends it) does better: it finishes
its step and saves ``last.pth`` with an ``interrupted`` entry (``InterruptedEpoch``): the epoch,
the steps done, the loss sums so far and every rank's RNG states (Python, NumPy, torch and the
mask generator) after that step. The same command then rebuilds the epoch's loader from its
seeded generator, draws (without training on) the batches already trained on, restores those
states and goes on: it ends exactly where the uninterrupted run ends.
"""
from __future__ import annotations

import argparse
import math
import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from models.checkpoint import strip_wrapper_prefixes


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


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""What a cluster scheduler sends before it ends a job (SLURM: SIGTERM, or SIGUSR1 with --signal)."""


class PreemptionSignals:
    """While installed, a preemption signal only records its name (``received``); the training
    loop checks it after every step. Installed from the main thread only (Python's rule for
    signal handlers); ``restore`` puts the previous handlers back."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in PREEMPTION_SIGNALS:
            self._previous[number] = signal.signal(number, self._record)

    def _record(self, number: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(number).name

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a scheduler signals every process of the job, and a loader
    worker ended by it would end the step the main process is finishing."""
    for number in PREEMPTION_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


@dataclass
class InterruptedEpoch:
    """Where a preempted epoch stopped: steps done, the loss sums of those steps, the signal,
    and per rank the RNG states after the last step (``rng``: ``rng_states()``,
    ``mask_generator``: the mask generator's state) and the signal that rank received."""

    epoch: int
    step: int
    sums: dict[str, float]
    signal: str
    ranks: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "sums": dict(self.sums), "signal": self.signal,
                "ranks": list(self.ranks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InterruptedEpoch":
        return cls(int(data["epoch"]), int(data["step"]), {k: float(v) for k, v in data["sums"].items()},
                   str(data.get("signal", "")), list(data["ranks"]))


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
    names = [strip_wrapper_prefixes(key) for key in state_dict]
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
