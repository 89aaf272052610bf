"""Training curriculum: mask-ratio and learning-rate schedules, and the per-segment tables.

Epochs are 1-based throughout (epoch 1 is the first epoch trained; with the defaults
phase 1 is epochs 1-300 and phase 2 epochs 301-400), as in docs/METHOD.md.

The per-segment tables hold, for every segment ID of the training split, the mask ratio r_s
and the loss weight w_s that the metric-guided update derives from per-segment PSNR-μ.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from models.checkpoint import CheckpointError
from utils.tonemap import mu_tonemap

PSNR_CAP_DB = 100.0
"""PSNR-μ reported for a segment reconstructed exactly (MSE = 0) or almost so."""


# ----------------------------------------------------------------------------- schedules


def mask_ratio(
    epoch: int,
    phase1_epochs: int = 300,
    total_epochs: int = 400,
    max_ratio: float = 0.9,
    curriculum: bool = True,
    constant_ratio: float = 0.75,
) -> float:
    """Curriculum mask ratio R for 1-based `epoch`.

    Phase 1 (epoch <= phase1_epochs): 0. Phase 2 is split into two halves of
    (total_epochs - phase1_epochs) / 2 epochs: R rises linearly to `max_ratio` at the end of
    the first half, then falls linearly back to 0 at `total_epochs` (with the defaults:
    (e - 300)·0.9/50 for e in 301..350, 0.9 - (e - 350)·0.9/50 for e in 351..400).
    Without the curriculum, phase 2 uses `constant_ratio` throughout. Epochs past
    `total_epochs` give 0 on the curriculum.
    """
    _check_phases(epoch, phase1_epochs, total_epochs)
    if epoch <= phase1_epochs:
        return 0.0
    if not curriculum:
        return float(constant_ratio)
    half = (total_epochs - phase1_epochs) / 2
    if half == 0:
        return 0.0
    into_phase2 = epoch - phase1_epochs
    if into_phase2 <= half:
        return into_phase2 * max_ratio / half
    return max(0.0, max_ratio - (into_phase2 - half) * max_ratio / half)


def learning_rate(
    epoch: int,
    lr: float = 5e-4,
    eta_min: float = 5e-5,
    phase1_epochs: int = 300,
    total_epochs: int = 400,
    phase1_period: int | None = None,
) -> float:
    """Learning rate used while training 1-based `epoch`.

    docs/METHOD.md's formula is written in e = the number of epochs already completed
    (`epoch - 1`, which is also `LambdaLR.last_epoch` during that epoch when the scheduler
    steps once at the end of every epoch). So the first epoch of each phase starts at `lr`:

    - phase 1, e < phase1_epochs: cosine with period `phase1_period` (default
      `total_epochs`, 400): eta_min + (lr - eta_min)·(1 + cos(π·e/period))/2;
    - phase 2, e >= phase1_epochs (epoch 301 onwards): restart,
      eta_min + (lr - eta_min)·(1 + cos(π·(e - phase1_epochs)/(total_epochs - phase1_epochs)))/2.

    With the defaults: epoch 1 → 5e-4, epoch 300 → formula at e = 299, epoch 301 → 5e-4
    (restart), epoch 351 → 2.75e-4, epoch 400 → formula at e = 399 (just above 5e-5).
    The cosine stays at eta_min once its period is over.
    """
    _check_phases(epoch, phase1_epochs, total_epochs)
    completed = epoch - 1
    if completed < phase1_epochs:
        progress = completed / (phase1_period or total_epochs)
    else:
        progress = (completed - phase1_epochs) / max(total_epochs - phase1_epochs, 1)
    progress = min(progress, 1.0)
    return eta_min + (lr - eta_min) * (1.0 + math.cos(math.pi * progress)) / 2.0


def is_guided_update_epoch(epoch: int, phase1_epochs: int = 300, phase1_interval: int = 5) -> bool:
    """Whether the metric-guided update runs at 1-based `epoch`: every `phase1_interval`
    epochs in phase 1 (epochs 5, 10, ...), every epoch in phase 2."""
    return epoch > phase1_epochs or epoch % phase1_interval == 0


def _check_phases(epoch: int, phase1_epochs: int, total_epochs: int) -> None:
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got epoch {epoch}")
    if not 0 <= phase1_epochs <= total_epochs:
        raise ValueError(f"need 0 <= phase1_epochs ({phase1_epochs}) <= total_epochs ({total_epochs})")


class LearningRateFactor:
    """`LambdaLR` factor: completed epochs → learning_rate(completed + 1) / lr.

    A callable object with plain attributes, so `LambdaLR.state_dict()` saves them and
    `load_state_dict()` restores them (the checkpoint's schedule wins over the constructor's).
    """

    def __init__(
        self,
        lr: float = 5e-4,
        eta_min: float = 5e-5,
        phase1_epochs: int = 300,
        total_epochs: int = 400,
        phase1_period: int | None = None,
    ) -> None:
        self.lr = lr
        self.eta_min = eta_min
        self.phase1_epochs = phase1_epochs
        self.total_epochs = total_epochs
        self.phase1_period = phase1_period

    def __call__(self, completed_epochs: int) -> float:
        rate = learning_rate(
            completed_epochs + 1, self.lr, self.eta_min, self.phase1_epochs, self.total_epochs, self.phase1_period
        )
        return rate / self.lr


def build_lr_scheduler(
    optimizer: Optimizer,
    lr: float = 5e-4,
    eta_min: float = 5e-5,
    phase1_epochs: int = 300,
    total_epochs: int = 400,
    phase1_period: int | None = None,
    start_epoch: int = 1,
) -> LambdaLR:
    """A `LambdaLR` following `learning_rate`; call `.step()` once at the end of every epoch.

    On return the optimiser's lr is already the one of 1-based `start_epoch`, and during
    epoch k `scheduler.last_epoch == k - 1`. To resume, build it with any `start_epoch` and
    `load_state_dict` the saved scheduler (together with the optimiser's state).
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    factor = LearningRateFactor(lr, eta_min, phase1_epochs, total_epochs, phase1_period)
    return LambdaLR(optimizer, factor, last_epoch=start_epoch - 2)


# ----------------------------------------------------------------------------- per-segment tables


def segment_positions(ids: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Positions in the sorted ``ids`` (a table's entries) of the segment IDs ``segments`` (any
    shape, every ID among ``ids``), on the segments' device."""
    return torch.searchsorted(ids.to(segments.device), segments.long())


class SegmentTables:
    """Mask ratio r_s and loss weight w_s for every segment ID in use in the split.

    The tables hold one entry per ID in ``ids`` (sorted), whatever the IDs' values: a split
    whose masks use IDs up to 2**24 costs no more than one numbered 0..n-1. ``index(ids)`` turns
    segment IDs into table positions; an int ``n`` stands for the IDs 0..n-1.

    `ratio` starts at 0 and `weight` at 1. A guided pass does not write them directly: each
    scene's values are added to `pending` (rows: ratio sums, weight sums, contribution
    counts), and `commit()` replaces the values of every segment that got a contribution by
    the mean of its contributions. Because each segment belongs to one scene, the passes of
    several distributed ranks merge with one `all_reduce(SUM)` of `pending`
    (`all_reduce_pending()`); a scene evaluated twice (sampler padding) averages to itself.
    """

    def __init__(self, ids: int | torch.Tensor, device: torch.device | str | None = None) -> None:
        ids = torch.arange(ids) if isinstance(ids, int) else torch.as_tensor(ids, dtype=torch.long)
        self.ids = torch.unique(ids).to(device)
        num_ids = self.ids.numel()
        self.ratio = torch.zeros(num_ids, device=device)
        self.weight = torch.ones(num_ids, device=device)
        self.pending = torch.zeros(3, num_ids, device=device)

    def index(self, segments: torch.Tensor) -> torch.Tensor:
        """Table positions of segment IDs (any shape, IDs from ``ids``), on their device."""
        return segment_positions(self.ids, segments)

    @property
    def num_ids(self) -> int:
        return self.ratio.numel()

    @property
    def device(self) -> torch.device:
        return self.ratio.device

    def to(self, device: torch.device | str) -> SegmentTables:
        """Move the tables (in place) to `device`; returns self."""
        self.ids, self.ratio, self.weight, self.pending = (
            t.to(device) for t in (self.ids, self.ratio, self.weight, self.pending))
        return self

    def add(self, ids: torch.Tensor, ratio: torch.Tensor, weight: torch.Tensor) -> None:
        """Add one scene's per-segment values (by segment ID) to the pending pass."""
        positions = self.index(ids.to(self.device))
        self.pending[0].index_add_(0, positions, ratio.to(self.pending))
        self.pending[1].index_add_(0, positions, weight.to(self.pending))
        self.pending[2].index_add_(0, positions, torch.ones_like(positions, dtype=self.pending.dtype))

    def all_reduce_pending(self, group: Any = None) -> None:
        """Sum the pending pass over all ranks (a no-op outside torch.distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.pending, op=torch.distributed.ReduceOp.SUM, group=group)

    def commit(self) -> int:
        """Apply the pending pass and clear it; returns the number of segments updated."""
        ratio_sum, weight_sum, count = self.pending
        seen = count > 0
        self.ratio = torch.where(seen, ratio_sum / count.clamp_min(1), self.ratio)
        self.weight = torch.where(seen, weight_sum / count.clamp_min(1), self.weight)
        self.pending.zero_()
        return int(seen.sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Committed tables and their IDs for a checkpoint (the pending pass is not saved)."""
        return {"ids": self.ids.clone(), "ratio": self.ratio.clone(), "weight": self.weight.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore tables saved by `state_dict`, keeping this device: the values of the IDs both
        know are taken (tables saved without ``ids`` are indexed by ID 0..n-1); IDs the saved
        tables lack keep their start values."""
        saved_ids = state.get("ids")
        if saved_ids is None:
            saved_ids = torch.arange(state["ratio"].numel())
        for name in ("ratio", "weight"):
            if state[name].shape != saved_ids.shape:
                raise CheckpointError(f"the checkpoint's {name} table has shape {tuple(state[name].shape)} for "
                                      f"{saved_ids.numel()} segment IDs")
        saved_ids = saved_ids.to(self.device, torch.long)
        positions = torch.searchsorted(saved_ids, self.ids).clamp_max(max(saved_ids.numel() - 1, 0))
        known = saved_ids[positions] == self.ids if saved_ids.numel() else torch.zeros_like(self.ids, dtype=torch.bool)
        for name in ("ratio", "weight"):
            values = state[name].to(self.device, torch.float32)
            current = getattr(self, name)
            setattr(self, name, torch.where(known, values[positions] if values.numel() else current, current))
        self.pending.zero_()


GUIDING_METRICS = ("psnr_mu", "psnr_l")
"""Per-segment metrics the metric-guided update can use: PSNR of the μ-law tone-mapped images
(the released default) or of the linear values."""


def segment_psnr_mu(
    pred: torch.Tensor, label: torch.Tensor, segments: torch.Tensor, metric: str = "psnr_mu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR-μ (or, with ``metric="psnr_l"``, linear PSNR) of every segment of one full image.

    `pred`, `label`: linear HDR, 3×H×W (or 1×3×H×W); `segments`: the H×W segment IDs in any
    shape with H·W elements and any dtype holding integers. The MSE of a segment runs over
    its pixels and the 3 channels of the μ-law tone-mapped (or linear) images (accumulated in float64);
    PSNR = 20·log10(1/√MSE), capped at `PSNR_CAP_DB` so that MSE = 0 stays finite.
    Returns (ids: sorted unique IDs, long; psnr: float32), both on pred's device.
    """
    if pred.dim() == 4:
        pred, label = pred[0], label[0]
    if metric not in GUIDING_METRICS:
        raise ValueError(f"unknown guiding metric {metric!r}; expected one of {GUIDING_METRICS}")
    channels = pred.shape[0]
    if metric == "psnr_mu":
        pred, label = mu_tonemap(pred), mu_tonemap(label)
    sq_err = (pred - label).double().square().sum(0).reshape(-1)
    flat_ids = segments.reshape(-1).to(pred.device).long()
    if flat_ids.numel() != sq_err.numel():
        raise ValueError(f"segments has {flat_ids.numel()} elements, the image {sq_err.numel()} pixels")
    ids, group = torch.unique(flat_ids, return_inverse=True)
    err_sum = torch.bincount(group, weights=sq_err, minlength=ids.numel())
    pixels = torch.bincount(group, minlength=ids.numel())
    mse = (err_sum / (channels * pixels)).clamp_min(10.0 ** (-PSNR_CAP_DB / 10.0))
    return ids, (-10.0 * torch.log10(mse)).float()


def update_tables(
    tables: SegmentTables,
    ids: torch.Tensor,
    psnr: torch.Tensor,
    R: float,
    guided_mask: bool = True,
    guided_loss: bool = True,
    mask_temperature: float = 0.05,
    loss_temperature: float = -0.1,
) -> None:
    """Add one scene's metric-guided values to `tables`' pending pass (see `commit`).

    With S = the scene's segment count: r_s = R·S·softmax_s(mask_temperature·PSNR_s) (easy
    segments masked more; stored unclamped, min(r_s, 1) is applied when masking) and
    w_s = S·softmax_s(loss_temperature·PSNR_s) (with the released negative temperature, hard
    segments weigh more; mean 1 per scene).
    `guided_mask=False` gives r_s = R, `guided_loss=False` gives w_s = 1.
    """
    psnr = psnr.to(tables.device, torch.float32)
    count = psnr.numel()
    if guided_mask:
        ratio = R * count * torch.softmax(mask_temperature * psnr, dim=0)
    else:
        ratio = torch.full_like(psnr, R)
    if guided_loss:
        weight = count * torch.softmax(loss_temperature * psnr, dim=0)
    else:
        weight = torch.ones_like(psnr)
    tables.add(ids, ratio, weight)
