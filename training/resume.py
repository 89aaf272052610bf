"""Where a training run starts and how it comes back: the resume policy (``plan_start``: fine-tune,
continue ``last.pth``, ``--resume`` or start afresh), what a run saves besides the weights (the
RNG states, the per-epoch seeds that make a resumed epoch repeat exactly, the run's history) and
how that state is restored (``restore_training_state``).

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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from models.checkpoint import read_checkpoint, strip_wrapper_prefixes, unwrap
from utils.cli import UsageError


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


# ----------------------------------------------------------------------------- where a run starts


@dataclass
class StartPoint:
    """Where a run starts, decided once from the options and the run folder (``plan_start``)."""

    epoch: int  # the first epoch to train
    source: Path | None = None  # the checkpoint the network comes from (None: a new network)
    checkpoint: dict[str, Any] | None = None  # that checkpoint, read
    restore: bool = False  # also restore its optimiser, tables, RNG states and history
    interrupted: InterruptedEpoch | None = None  # the preempted epoch this run continues
    notes: list[str] = field(default_factory=list)  # what the log should say about it


def resume_source(args: argparse.Namespace, logdir: Path, notes: list[str]) -> Path | None:
    """The checkpoint to continue from: ``<logdir>/last.pth`` when there is one (unless
    ``--restart``), else ``--resume`` (a run folder meaning its ``last.pth``)."""
    last = logdir / "last.pth"
    if last.is_file() and not args.restart:
        if args.resume is not None and args.resume.resolve() != last.resolve():
            notes.append(f"{last} exists: continuing this run from it instead of --resume {args.resume} "
                         "(pass --restart to start over)")
        return last
    resume = args.resume
    if resume is not None and resume.is_dir():  # a run's folder: its latest checkpoint
        resume = resume / "last.pth"
    return resume


def plan_start(args: argparse.Namespace, logdir: Path) -> StartPoint:
    """The whole resume policy: ``--finetune_from`` (weights, shallow extractor trained), then
    ``<logdir>/last.pth`` or ``--resume`` (weights and, for the project's checkpoints, the
    training state; the released ``--is_freeze`` takes the weights only), else a new network.
    The first epoch is ``--start_epoch`` when given, else the one after the checkpoint's."""
    notes: list[str] = []
    default_start = 1 if args.phase == 1 else args.phase1_epochs + 1
    if args.phase == 2 and args.finetune_from is None and args.resume is None \
            and not (logdir / "last.pth").is_file():
        notes.append("WARNING: phase 2 without --resume starts from random weights, not from a phase-1 network "
                     "(pass --resume <phase-1 checkpoint or run folder>)")
    if args.finetune_from is not None:
        notes.append(f"weights from {args.finetune_from}")
        return StartPoint(args.start_epoch or default_start, args.finetune_from,
                          read_checkpoint(args.finetune_from), notes=notes)
    path = resume_source(args, logdir, notes)
    if path is None:
        return StartPoint(args.start_epoch or default_start, notes=notes)
    data = read_checkpoint(path)
    if args.is_freeze and path != logdir / "last.pth":  # the released fine-tuning: weights only
        notes.append(f"weights from {path}; fine-tuning from epoch {args.start_epoch or 1}")
        return StartPoint(args.start_epoch or 1, path, data, notes=notes)
    notes.append(f"resumed weights from {path}")
    start = args.start_epoch or max(int(data.get("epoch", 0)) + 1, default_start)
    if args.phase == 2 and start <= args.phase1_epochs:
        raise UsageError(f"phase 2 trains epochs {args.phase1_epochs + 1}-{args.epochs}; start epoch {start} "
                         "belongs to phase 1 (use train_phase1.py, or a later --start_epoch)")
    return StartPoint(start, path, data, restore="optimizer" in data,
                      interrupted=interrupted_epoch(data, path, start, notes), notes=notes)


def interrupted_epoch(data: Mapping[str, Any], path: Path, start: int, notes: list[str]) -> InterruptedEpoch | None:
    """The preempted epoch of ``data`` to continue, when the run starts at that epoch."""
    if "interrupted" not in data or "optimizer" not in data:
        return None
    interrupted = InterruptedEpoch.from_dict(data["interrupted"])
    if interrupted.epoch != start:
        notes.append(f"note: {path} stopped after step {interrupted.step} of epoch {interrupted.epoch}; this run "
                     f"starts at epoch {start} and does not continue that epoch")
        return None
    return interrupted


def restore_training_state(data: Mapping[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           tables: Any, scaler: Any, log: Callable[[str], None]) -> RunState:
    """Load a checkpoint's optimiser (re-keyed by name for a released one), segment tables, RNG
    states and scaler, and return its run history (the scheduler is rebuilt for the start epoch:
    the learning rate is a function of the epoch)."""
    try:
        if is_released_checkpoint(data):  # its Adam state is in the released network's parameter order
            names = {p: n for n, p in unwrap(model).named_parameters()}
            order = parameter_order(data["state_dict"], set(names.values()))
            state, dropped = optimizer_state_by_name(data["optimizer"], order, optimizer, names)
            if dropped:
                log(f"note: no optimiser state restored for {len(dropped)} parameter(s) "
                    f"({', '.join(dropped[:3])}{', …' if len(dropped) > 3 else ''})")
            optimizer.load_state_dict(state)
        else:
            optimizer.load_state_dict(data["optimizer"])
    except (ValueError, KeyError, IndexError) as err:
        log(f"note: optimiser state not restored ({err}); starting Adam afresh")
    if "tables" in data:
        tables.load_state_dict(data["tables"])
    if "rng" in data:
        restore_rng_states(data["rng"])
    if "scaler" in data and scaler is not None:
        scaler.load_state_dict(data["scaler"])
    return RunState(int(data.get("epoch", 0)), float(data.get("best_psnr_mu", -math.inf)),
                    list(data.get("history", [])))
