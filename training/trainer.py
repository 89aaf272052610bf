"""The SMHDR training loop shared by ``train_phase1.py`` and ``train_phase2.py`` (docs/METHOD.md).

One epoch: a metric-guided update when it is due (per-segment PSNR-μ of full training scenes →
per-segment mask ratios and loss weights), then ``repeat`` passes over random training crops
with the masked step (phase 2) or the plain step (phase 1), then a checkpoint, and every
``--test_interval`` epochs a test-split evaluation.

Reproducibility, resuming and preemption (SIGTERM / SIGUSR1: the step finishes, ``last.pth``
keeps it, exit 75): ``training/resume.py``. A split may mix exposure counts: every batch comes
from scenes of one count (``datasets.hdr_dataset.ExposureGroupedBatchSampler``). One run at a
time per ``--logdir``: ``utils/run_lock.py``. A full disk ends the run with one line; TensorBoard
and ``train.log`` stop with a note instead of a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from datasets import HDRFullImageDataset, HDRTrainDataset
from datasets.hdr_dataset import (
    EpochSeededBatches,
    ExposureGroupedBatchSampler,
    crop_loader,
    end_workers,
    release_batch,
    to_network_batch,
)
from datasets.options import cache_mode, scene_layout
from datasets.scene import list_scenes, scene_input_files
from datasets.preprocess import reference_ldr
from evaluation.evaluate import evaluate_scenes
from evaluation.tables import mean_metrics
from models.checkpoint import (
    atomic_save,
    model_from_checkpoint,
    unwrap,
)
from models.inference import (
    GUIDED_PAD_MULTIPLE,
    InferenceSettings,
    autocast_context,
    eval_mode,
    reconstruct,
    resolve_amp,
)
from models.channel_attention import channel_attention_heads
from models.registry import architecture_name
from models.smnet import SMNet
from training.curriculum import (
    SegmentTables,
    build_lr_scheduler,
    is_guided_update_epoch,
    mask_ratio,
    segment_positions,
    segment_psnr_mu,
    update_tables,
)
from training.losses import HDRLoss, build_loss
from training.masking import build_loss_map, build_mask_map
from training.options import INERT_OPTIONS, model_config, parse_args
from training.resume import (
    InterruptedEpoch,
    PreemptionSignals,
    RunState,
    StartPoint,
    epoch_seed,
    ignore_preemption_signals,
    plain_args,
    plan_start,
    restore_rng_states,
    restore_training_state,
    rng_states,
    seed_everything,
)
from utils import distributed
from utils.cli import Preempted, RunFailed, UsageError, describe_os_error, inert_notes, run_cli
from utils.run_lock import LOCK_NAME, RunLock, acquire_run_lock
from utils.safe_paths import refuse_overwriting, same_file
from utils.tonemap import mu_tonemap

LOG = logging.getLogger("smhdr.train")
SHALLOW_EXTRACTOR = ("conv_first.",)
"""What ``--finetune_from`` trains: the whole shallow extractor, as the paper adapts a model."""
RELEASED_FREEZE = ("conv_first.0.",)
"""What the released ``--is_freeze`` trains: the first convolution of the shallow extractor."""
ARCHITECTURE_KEYS = ("in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
                     "channel_mlp_ratio", "ca_heads_per_exposure", "reference_residual")
"""Network options a checkpoint fixes; the others (drop rates, mask blocks) are training choices."""


# ----------------------------------------------------------------------------- building blocks


def freeze_all_but_shallow_extractor(model: nn.Module, trainable_prefixes: tuple[str, ...] = SHALLOW_EXTRACTOR
                                     ) -> float:
    """Train only the parameters under ``trainable_prefixes`` (by default all of ``conv_first``,
    shared by all exposures); returns the trainable share of the parameters."""
    total = trainable = 0
    for name, parameter in unwrap(model).named_parameters():
        parameter.requires_grad_(name.startswith(trainable_prefixes))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable / total


def init_released_weights(model: nn.Module, std: float = 0.02) -> None:
    """The released ``--init_weights``: convolution and linear weights drawn from
    normal(0, std), their biases zero (norm layers keep their ones and zeros)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def segment_ids_in_use(dataset: HDRFullImageDataset, crop: int = 0, progress: bool = False) -> torch.Tensor:
    """The segment IDs of a split (sorted), which the per-segment tables are sized by. Every
    scene is decoded (and validated) on the way, and must be at least ``crop`` pixels on each side."""
    ids = []
    for scene in dataset.scenes(progress):
        if min(scene.size) < crop:
            raise UsageError(f"scene {scene.path}: {scene.size[0]}×{scene.size[1]} is smaller than the "
                             f"--train_patch_size {crop} crop; lower --train_patch_size")
        ids.append(np.unique(scene.segments))
    return torch.from_numpy(np.unique(np.concatenate(ids)))


def planned_outputs(args: argparse.Namespace, logdir: Path) -> list[Path]:
    """The files a run of this phase may write into ``logdir`` (TensorBoard's folder aside)."""
    first = 1 if args.phase == 1 else args.phase1_epochs + 1
    last = args.phase1_epochs if args.phase == 1 else args.epochs
    epochs = [e for e in range(first, last + 1) if e % args.save_interval == 0 or e == last]
    names = ["last.pth", "best.pth", "train.log", LOCK_NAME, *(f"epoch_{e:04d}.pth" for e in epochs)]
    return [logdir / name for name in names]


def refuse_overwriting_inputs(args: argparse.Namespace, logdir: Path) -> None:
    """Before anything is written: no checkpoint or log of this run may replace a file it reads
    (--resume, --finetune_from, --vgg_weights, a scene's files). Continuing a run from its own
    ``<logdir>/last.pth`` is what resuming means, and allowed."""
    outputs = planned_outputs(args, logdir)
    inputs: list[Path] = []
    for option in ("resume", "finetune_from", "vgg_weights"):
        path = getattr(args, option, None)
        if path is not None and not (option == "resume" and same_file(path, logdir / "last.pth")):
            refuse_overwriting(outputs, [path], how=f"--logdir {logdir}; --{option} {path} would be replaced")
    layout = scene_layout(args)
    for split in (args.train_path, args.test_path):
        if split.lower() != "none" and (Path(args.dataset_dir) / split).is_dir():
            inputs += [f for scene_dir in list_scenes(args.dataset_dir, split) for f in scene_input_files(scene_dir, layout)]
    refuse_overwriting(outputs, inputs, how=f"--logdir {logdir}")


def move_previous_run_aside(logdir: Path) -> Path | None:
    """Move the checkpoints, log and TensorBoard events of an earlier run in ``logdir`` into
    ``logdir/replaced_<date-time>/``; returns that folder (None when there was nothing)."""
    previous = [p for p in logdir.glob("*.pth")] + [p for p in (logdir / "train.log", logdir / "tensorboard")
                                                     if p.exists()]
    if not previous:
        return None
    target = logdir / time.strftime("replaced_%Y%m%d-%H%M%S")
    target.mkdir()
    for path in previous:
        path.rename(target / path.name)
    return target


def match_gradient_layout(model: nn.Module) -> None:
    """Lay out depthwise convolution weights (C×1×k×k) the way their gradients come out of the
    channels-last convolutions, stride 1 on the size-1 axis. DDP copies every gradient into its
    bucket view when the strides differ (and warns "grad strides do not match bucket view
    strides"); with equal strides it does not."""
    for parameter in model.parameters():
        if parameter.dim() == 4 and parameter.shape[1] == 1:
            height, width = parameter.shape[-2:]
            # written out: PyTorch counts the C×1×k×k weight as channels-last already and would not copy
            restrided = torch.empty_strided(parameter.shape, (height * width, 1, width, 1), dtype=parameter.dtype,
                                            device=parameter.device)
            parameter.data = restrided.copy_(parameter.data)


def weights_finite_flag(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """Whether every weight is finite, as a boolean tensor on their device (one reduction, no
    synchronisation)."""
    norms = torch._foreach_norm([p.detach() for p in parameters], ord=float("inf"))
    return torch.isfinite(torch.stack(norms)).all()


def weights_are_finite(parameters: Sequence[torch.Tensor]) -> bool:
    """Whether every weight is finite (one reduction and one device synchronisation)."""
    return bool(weights_finite_flag(parameters))


def scenes_by_exposure_count(splits: Mapping[str, HDRFullImageDataset | HDRTrainDataset | None]
                             ) -> dict[int, list[str]]:
    """``{exposure count: ["split/scene", ...]}`` over the given splits (None ones skipped)."""
    found: dict[int, list[str]] = {}
    for split, dataset in splits.items():
        if dataset is not None:
            for name, count in zip(dataset.scene_names, dataset.exposure_counts):
                found.setdefault(count, []).append(f"{split}/{name}")
    return dict(sorted(found.items()))


def _first_names(names: Sequence[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (f", … ({len(names)} in all)" if len(names) > count else "")


def check_exposure_counts(model: nn.Module, splits: Mapping[str, HDRFullImageDataset | HDRTrainDataset | None]
                          ) -> None:
    """Refuse, before the first step, scenes whose exposure count the network cannot merge: the
    channel attention splits the embedding into one slot per exposure, so the count must divide
    ``embed_dim`` (the weights are the same for every count)."""
    net = unwrap(model)
    refused = []
    for count, names in scenes_by_exposure_count(splits).items():
        try:
            channel_attention_heads(net.embed_dim, count, net.ca_heads_per_exposure)
        except ValueError as err:
            refused.append(f"scenes of {count} exposures ({_first_names(names)}): {err}")
    if refused:
        raise UsageError("; ".join(refused))


def steps_per_exposure_count(train_set: HDRTrainDataset, batch_size: int, world_size: int) -> dict[int, int]:
    """Steps per epoch that the crops of each exposure count make (see ``ExposureGroupedBatchSampler``)."""
    sampler = ExposureGroupedBatchSampler(train_set.crop_exposure_counts(), batch_size, torch.Generator(), world_size)
    return sampler.steps_per_group()


# ----------------------------------------------------------------------------- logs on a full disk


class LogFile(logging.FileHandler):
    """``train.log``. A write that fails (a full disk) ends the file log with one note on stdout
    instead of logging's traceback for every later line."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        err = sys.exc_info()[1]
        why = describe_os_error(err) if isinstance(err, OSError) else str(err)
        print(f"note: {self.baseFilename} is no longer written ({why}); the log goes on here only", flush=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the last flush of a failed file fails again
            super().close()


def _is_tensorboard_thread(thread: threading.Thread | None) -> bool:
    return thread is not None and type(thread).__module__.startswith("tensorboard.")


class QuietWriterThreads:
    """``threading.excepthook`` while a TensorBoard log is open: an OSError in TensorBoard's writer
    thread is kept quiet, anything else goes to the previous hook. It holds nothing but that hook:
    every thread started meanwhile keeps the hook it saw, and a hook that held the run (its
    trainer, its tensors) would keep them alive until such a thread ends, which may be during the
    interpreter's shutdown, where freeing a tensor from a non-main thread aborts the process."""

    def __init__(self, previous: Callable[[threading.ExceptHookArgs], Any]) -> None:
        self.previous = previous

    def __call__(self, args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and _is_tensorboard_thread(args.thread):
            return  # the main thread sees it at the next write
        self.previous(args)


class TensorBoardLog:
    """The run's TensorBoard writer. Its events are written by a background thread; when a write
    fails (a full disk) that thread's traceback is kept quiet (``threading.excepthook``), the
    failure surfaces at the next write in the main thread, and TensorBoard logging ends with one
    note: the run goes on, and its checkpoints decide whether it can."""

    def __init__(self, folder: Path, note: Callable[[str], None]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self._note = note
        self._hook = QuietWriterThreads(threading.excepthook)
        threading.excepthook = self._hook
        self.writer: Any = None
        try:
            self.writer = SummaryWriter(str(folder))
        except OSError as err:
            self._fail(err)

    def write(self, action: Callable[[Any], None]) -> None:
        """Run ``action(writer)`` (add_scalar, add_image, flush ...) unless logging has ended."""
        if self.writer is None:
            return
        try:
            action(self.writer)
        except OSError as err:
            self._fail(err)

    def _fail(self, err: OSError) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()
        self._note(f"note: TensorBoard events are no longer written to {self.folder} "
                   f"({describe_os_error(err)}); training goes on")

    def close(self) -> None:
        """Flush and close the writer; put the previous ``threading.excepthook`` back."""
        self.write(lambda writer: writer.close())
        self.writer = None
        if threading.excepthook is self._hook:
            threading.excepthook = self._hook.previous


# ----------------------------------------------------------------------------- the steps


@dataclass
class StepTimes:
    """Seconds spent in each part of the training steps of an epoch."""

    mask_map: float = 0.0
    forward: float = 0.0
    backward: float = 0.0
    steps: int = 0


PROGRESS_REFRESH = 50
"""Steps between the progress bar's loss updates (each reads the loss sums from the device)."""


class StepChecks:
    """An epoch's per-step checks and loss sums at one host–device synchronisation per step.

    A step's finiteness (loss and weights) and loss terms stay on the device. Under torchrun the
    step's flags and every rank's preemption flag are agreed on at once (one all-reduce, read:
    the synchronisation), so all ranks stop after the same step. In one process the preemption
    flag needs no device, and a step's finiteness is read after the next step has been queued,
    so the device never waits for the host; ``finish`` reads the last one (end of the epoch, a
    preemption) before anything is saved. The sums are float64, added in the order the host
    once added them, and read by ``host_sums`` (end, preemption, progress bar)."""

    def __init__(self, device: torch.device, sums: Mapping[str, float], distributed_run: bool) -> None:
        self.device = device
        self.distributed = distributed_run
        self.names = tuple(sums)  # "loss" and the loss function's terms, by name
        self.sums = torch.tensor([sums[key] for key in self.names], dtype=torch.float64, device=device)
        self._pending: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (step, loss, finite) not yet read

    def after_step(self, step: int, result: Mapping[str, torch.Tensor], parameters: Sequence[torch.Tensor],
                   stop: bool) -> tuple[str | None, bool]:
        """Queue step ``step``'s checks; returns (why an earlier or this step failed, or None;
        whether to stop after this step)."""
        for index, key in enumerate(self.names):
            self.sums[index] += result[key].detach().double()
        loss = result["loss"].detach()
        finite = torch.isfinite(loss) & weights_finite_flag(parameters)
        if self.distributed:
            flags = torch.stack([finite.int(), torch.tensor(0 if stop else 1, dtype=torch.int32, device=self.device)])
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
            all_finite, none_stopped = flags.tolist()
            failure = None if all_finite else self._describe(step, loss, finite, other_rank=True)
            return failure, not none_stopped
        previous, self._pending = self._pending, (step, loss, finite)
        return (self._read(previous) if previous is not None else None), stop

    def finish(self) -> str | None:
        """Read the last step's flag (why it failed, or None)."""
        pending, self._pending = self._pending, None
        return None if pending is None else self._read(pending)

    def host_sums(self) -> dict[str, float]:
        return dict(zip(self.names, self.sums.tolist()))

    def _read(self, pending: tuple[int, torch.Tensor, torch.Tensor]) -> str | None:
        step, loss, finite = pending
        return None if bool(finite) else self._describe(step, loss, finite, other_rank=False)

    @staticmethod
    def _describe(step: int, loss: torch.Tensor, finite: torch.Tensor, other_rank: bool) -> str:
        if not torch.isfinite(loss):
            what = f"the loss is {float(loss)}"
        else:
            what = "another process's loss or weights became non-finite" if other_rank and bool(finite) else \
                "the weights became non-finite"
        return f"step {step}: {what}"


def training_step(model: nn.Module, batch: Mapping[str, torch.Tensor], loss_fn: HDRLoss,
                  optimizer: torch.optim.Optimizer, ratio_table: torch.Tensor | None,
                  weight_table: torch.Tensor | None, device: torch.device, amp: str | None = None,
                  scaler: torch.amp.GradScaler | None = None, generator: torch.Generator | None = None,
                  times: StepTimes | None = None, whole_crop_masking: bool = False,
                  segment_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step on a batch; ``ratio_table`` None means no masking (phase 1),
    ``weight_table`` None a loss map of ones. With ``whole_crop_masking`` (the released
    ``--mask_choice 0``) the mask map ignores the segments: ``ratio_table[0]`` of each crop's
    pixels are masked. ``segment_ids`` (``SegmentTables.ids``) are the IDs the tables' entries
    belong to; without it the tables are indexed by the segment IDs themselves. Returns the loss terms (detached) and the mask map
    (None without masking). ``times`` (benchmarks) adds the split of the step, at the cost of a
    device synchronisation per part."""
    inputs = batch["input"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    start = time.perf_counter()
    mask_map = loss_map = None
    if ratio_table is not None or weight_table is not None:
        segments = batch["segments"].to(device, non_blocking=True)
        if segment_ids is not None:
            segments = segment_positions(segment_ids, segments)
        if ratio_table is not None:
            mask_map = build_mask_map(torch.zeros_like(segments) if whole_crop_masking else segments, ratio_table,
                                      generator)
        if weight_table is not None:
            loss_map = build_loss_map(segments, weight_table)
    if times is not None:
        distributed.synchronize(device)
        after_maps = time.perf_counter()
        times.mask_map += after_maps - start
    with autocast_context(device, amp):
        prediction = model(inputs, mask_map)
    losses = loss_fn(prediction, label, loss_map)
    if times is not None:
        distributed.synchronize(device)
        after_forward = time.perf_counter()
        times.forward += after_forward - after_maps
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses["loss"].backward()
        optimizer.step()
    if times is not None:
        distributed.synchronize(device)
        times.backward += time.perf_counter() - after_forward
        times.steps += 1
    return {**{name: value.detach() for name, value in losses.items()}, "mask_map": mask_map}


def metric_guided_update(model: nn.Module, scenes: HDRFullImageDataset, tables: SegmentTables, ratio: float,
                         args: argparse.Namespace, process: distributed.ProcessInfo,
                         amp: str | None = None) -> int:
    """Per-segment PSNR-μ of every training scene (each rank takes every world_size-th scene),
    merged over ranks into new mask ratios and loss weights; returns the segments updated."""
    net = unwrap(model)
    indices = range(process.rank, len(scenes), process.world_size)
    bar = tqdm(indices, desc="metric-guided update", unit="scene", leave=False,
               disable=args.no_progress or not process.is_main)
    with eval_mode(net):
        for index in bar:
            sample = scenes[index]
            inputs = sample["input"].unsqueeze(0).to(process.device)
            prediction = reconstruct(net, inputs, GUIDED_PAD_MULTIPLE, amp)[0].float()
            ids, psnr = segment_psnr_mu(prediction, sample["label"].to(process.device), sample["segments"],
                                        args.metric_guided)
            update_tables(tables, ids, psnr, ratio, args.is_guided_mask, args.is_guided_loss,
                          args.mask_temperature, args.loss_temperature)
    tables.all_reduce_pending()
    return tables.commit()


# ----------------------------------------------------------------------------- the run


def build_datasets(args: argparse.Namespace
                   ) -> tuple[HDRTrainDataset, HDRFullImageDataset, HDRFullImageDataset | None]:
    """The training crops, the whole training scenes (for the metric-guided update) and the test
    scenes (None with ``--test_path none``)."""
    layout, cache = scene_layout(args), cache_mode(args)
    train_set = HDRTrainDataset(args.dataset_dir, args.train_path, args.train_patch_size, args.repeat,
                                with_masks=True, cache=cache, layout=layout, encoded=True)
    guided_set = HDRFullImageDataset(args.dataset_dir, args.train_path, with_masks=True, cache=cache, layout=layout)
    if args.test_path.lower() == "none":
        return train_set, guided_set, None
    if not (Path(args.dataset_dir) / args.test_path).is_dir():
        raise UsageError(f"--test_path {args.test_path}: no folder {Path(args.dataset_dir) / args.test_path}; "
                         "pass --test_path none to train without evaluating (and without best.pth)")
    return train_set, guided_set, HDRFullImageDataset(args.dataset_dir, args.test_path, cache=cache, layout=layout)


def build_model(args: argparse.Namespace, start: StartPoint, log: Callable[[str], None]) -> SMNet:
    """The network (on the CPU): from the options for a new run, else shaped and filled by the
    start's checkpoint (the command line's network options then only choose training options)."""
    config = model_config(args)
    if start.checkpoint is None:
        model = SMNet(**config)
        if args.init_weights:
            init_released_weights(model)
        return model
    training_choices = {key: value for key, value in config.items() if key not in ARCHITECTURE_KEYS}
    model = model_from_checkpoint(start.checkpoint, start.source, **training_choices)
    differs = {key: model.config.get(key, False) for key in ARCHITECTURE_KEYS  # False: an option off, so unrecorded
               if key in config and config[key] != model.config.get(key, False)}
    if differs:
        log(f"network shape from {start.source}: {differs} (the command line's network options are ignored)")
    return model


def build_optimizer(model: nn.Module, args: argparse.Namespace, log: Callable[[str], None]
                    ) -> tuple[torch.optim.Adam, float]:
    """Adam over the trainable parameters, and their share of all: everything, or only the shallow
    extractor when fine-tuning (``--finetune_from``, the released ``--is_freeze``)."""
    share = 1.0
    if args.finetune_from is not None or args.is_freeze:
        prefixes = SHALLOW_EXTRACTOR if args.finetune_from is not None else RELEASED_FREEZE
        share = freeze_all_but_shallow_extractor(model, prefixes)
        log(f"fine-tuning: only {prefixes[0].rstrip('.')} is trained ({100 * share:.2f} % of the parameters)")
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(parameters, lr=args.lr, betas=(0.9, 0.999), eps=1e-8), share


class Trainer:
    """Builds everything from parsed options and runs the epochs of one phase."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.process = distributed.init_process(args.device)
        self.device = self.process.device
        self.logdir = Path(args.logdir)
        self.writer: TensorBoardLog | None = None
        self.preemption = PreemptionSignals()
        self._train_loader: DataLoader | None = None  # built by the first epoch, kept for the run
        refuse_overwriting_inputs(args, self.logdir)
        self.lock = self._lock_logdir()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        """Everything but the lock: logs, data, network, optimiser (see ``__init__``)."""
        args = self.args
        self.state = RunState()
        replaced = move_previous_run_aside(self.logdir) if args.restart and self.process.is_main else None
        self._setup_logging()
        if self.lock is not None and self.lock.note:
            self.log(self.lock.note)
        if replaced is not None:
            self.log(f"--restart: the previous run's checkpoints and log were moved to {replaced}")
        self.amp, amp_note = resolve_amp(args.amp, self.device)
        if amp_note:
            self.log(f"note: {amp_note}")
        self._last_mask_map: torch.Tensor | None = None  # for TensorBoard
        self._first_test_scene: tuple[Mapping[str, Any], torch.Tensor] | None = None

        self.train_set, self.guided_set, self.test_set = build_datasets(args)
        progress = not args.no_progress and self.process.is_main
        self._fill_scene_caches_per_node(progress)
        self.tables = SegmentTables(segment_ids_in_use(self.guided_set, args.train_patch_size, progress),
                                    device=self.device)
        if self.test_set is not None:  # decoded once now: a broken test file stops the run before the first step
            for _ in self.test_set.scenes(progress):
                pass
        self._check_steps_per_epoch()

        seed_everything(args.seed)
        self.loss_fn = build_loss(args.le_lambda, args.vgg_weights, args.linear_lambda).to(self.device)
        start = plan_start(args, self.logdir)
        self.model = build_model(args, start, self.log).to(self.device)
        for note in start.notes:
            self.log(note)
        self._interrupted = start.interrupted
        self._check_same_start(start.epoch)
        check_exposure_counts(self.model, {args.train_path: self.train_set, args.test_path: self.test_set})
        self.optimizer, self.trainable_share = build_optimizer(self.model, args, self.log)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        if start.restore:
            self.state = restore_training_state(start.checkpoint, self.model, self.optimizer, self.tables,
                                                self.scaler, self.log)
        # built after the optimiser state is restored: the learning rate is a function of the epoch
        self.scheduler = build_lr_scheduler(self.optimizer, args.lr, args.lr_min, args.phase1_epochs, args.epochs,
                                            start_epoch=start.epoch)
        self.start_epoch = start.epoch
        self.train_model = self._wrap(self.model)
        if self.process.is_main:
            self.writer = TensorBoardLog(self.logdir / "tensorboard", self.log)

    # -- setup helpers

    def _lock_logdir(self) -> RunLock | None:
        """The main process locks --logdir before anything is written there; every process
        learns whether it could (one all-reduce), so all of them stop when it could not."""
        lock: RunLock | None = None
        refusal: Exception | None = None
        if self.process.is_main:
            try:
                lock = acquire_run_lock(self.logdir, "--logdir")
            except (UsageError, OSError) as err:
                refusal = err
        if not distributed.all_ranks_ok(refusal is None, self.device):
            raise refusal or UsageError(f"--logdir {self.logdir} is in use by another run (see the main process)")
        return lock

    def _check_same_start(self, start_epoch: int) -> None:
        """Under torchrun every process must continue from the same point: each reads
        ``<logdir>/last.pth``, so a --logdir on one node's own disk would let the others start afresh."""
        if not self.process.distributed:
            return
        mine = (start_epoch, self._interrupted.step if self._interrupted is not None else 0)
        starts = sorted(set(distributed.gather_objects([mine])))
        if len(starts) > 1:
            raise UsageError(f"the processes would start at different (epoch, step) points {starts}: every process "
                             f"reads {self.logdir / 'last.pth'}, so --logdir must be on a filesystem all nodes share")

    def _fill_scene_caches_per_node(self, progress: bool) -> None:
        """Under torchrun with the npy cache, each node's local rank 0 decodes the scenes into
        their caches while the node's other ranks wait (nodes need not share a disk, so every
        node fills its own); one agreement then stops every rank when a scene could not be read."""
        if not self.process.distributed or self.train_set.reader.cache != "npy":
            return
        failure: Exception | None = None
        if self.process.local_rank == 0:
            try:
                for dataset in (self.guided_set, self.test_set):
                    if dataset is not None:
                        dataset.fill_cache(progress)
            except (UsageError, OSError) as err:
                failure = err
        if not distributed.all_ranks_ok(failure is None, self.device):
            raise failure or UsageError("a scene could not be read on another node (see the error there)")

    def _check_steps_per_epoch(self) -> None:
        """Refuse an epoch without a single step; note the exposure counts too rare for a batch
        (every batch holds scenes of one count, and an incomplete batch is dropped)."""
        args, world = self.args, self.process.world_size
        steps = steps_per_exposure_count(self.train_set, args.batch_size, world)
        per_process = " per process" if self.process.distributed else ""
        if sum(steps.values()) == 0 and len(steps) == 1:
            crops = len(self.train_set) // world
            raise UsageError(f"an epoch holds {crops} crops ({len(self.train_set.scene_dirs)} scenes × --repeat "
                             f"{args.repeat}{per_process}), fewer than --batch_size {args.batch_size}: not one "
                             "step would run; lower --batch_size or raise --repeat")
        scenes = scenes_by_exposure_count({args.train_path: self.train_set})
        rare = [f"{len(scenes[count]) * args.repeat} crops of {count}-exposure scenes "
                f"({_first_names(scenes[count])})" for count, number in steps.items() if number == 0]
        if sum(steps.values()) == 0:
            raise UsageError(f"every batch holds scenes of one exposure count, and each count has fewer crops per "
                             f"epoch than --batch_size {args.batch_size}{' × processes' if per_process else ''}: "
                             f"{'; '.join(rare)}; not one step would run; lower --batch_size or raise --repeat")
        if rare:
            self.log(f"note: {'; '.join(rare)}: fewer than one batch (--batch_size {args.batch_size}"
                     f"{' × processes' if per_process else ''}) per epoch, never trained on; raise --repeat")

    def _setup_logging(self) -> None:
        LOG.setLevel(logging.INFO)
        LOG.propagate = False
        LOG.handlers.clear()
        if not self.process.is_main:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        for handler in (logging.StreamHandler(sys.stdout), LogFile(self.logdir / "train.log")):
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            LOG.addHandler(handler)

    def log(self, message: str) -> None:
        if self.process.is_main:
            LOG.info(message)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.args.compile:
            model = torch.compile(model)
        if self.process.distributed:
            match_gradient_layout(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            # norm1_y of every block is never used by the released network (docs/METHOD.md).
            model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        return model

    # -- checkpoints

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        net = unwrap(self.model)
        data = {
            "state_dict": net.state_dict(), "config": dict(net.config), "epoch": epoch, "phase": self.args.phase,
            "preset": self.args.preset, "architecture": architecture_name(net.config),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "tables": self.tables.state_dict(), "rng": rng_states(),
            "best_psnr_mu": self.state.best_psnr_mu, "history": self.state.history, "args": plain_args(self.args),
        }
        if self.scaler is not None:
            data["scaler"] = self.scaler.state_dict()
        return data

    def save(self, epoch: int, improved: bool) -> None:
        if not self.process.is_main:
            return
        data = self.checkpoint(epoch)
        names = ["last.pth"] + ["best.pth"] * improved
        if epoch % self.args.save_interval == 0 or epoch == self.last_epoch:
            names.append(f"epoch_{epoch:04d}.pth")
        for name in names:
            self._write_checkpoint(data, name, f"epoch {epoch}")

    def _write_checkpoint(self, data: Mapping[str, Any], name: str, when: str) -> None:
        try:
            atomic_save(data, self.logdir / name)
        except OSError as err:
            raise RunFailed(f"{when}: cannot write {self.logdir / name}: {describe_os_error(err)}; "
                            "the previous checkpoints are intact") from None

    def save_interrupted(self, interrupted: InterruptedEpoch) -> Path:
        """``last.pth`` of a preempted epoch: the completed epochs' state (``epoch`` is the last
        completed one) with the weights, optimiser and tables after ``interrupted.step`` steps, and
        ``interrupted`` to continue from there. Every rank sends its RNG states (one gather); all
        ranks learn whether the main process could write it."""
        interrupted.ranks = distributed.gather_objects(interrupted.ranks)
        interrupted.signal = next((rank["signal"] for rank in interrupted.ranks if rank["signal"]), "")
        failure: RunFailed | None = None
        if self.process.is_main:
            data = self.checkpoint(self.state.epoch)
            data["interrupted"] = interrupted.to_dict()
            try:
                self._write_checkpoint(data, "last.pth", f"epoch {interrupted.epoch}, step {interrupted.step}")
            except RunFailed as err:
                failure = err
        if not distributed.all_ranks_ok(failure is None, self.device):
            raise failure or RunFailed(f"epoch {interrupted.epoch}: the main process could not save its checkpoint")
        return self.logdir / "last.pth"

    # -- epochs

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """``loss`` and the names of the loss function's terms: what the log and TensorBoard show."""
        return ("loss", *self.loss_fn.term_names)

    @property
    def last_epoch(self) -> int:
        return self.args.phase1_epochs if self.args.phase == 1 else self.args.epochs

    def loader(self, epoch: int) -> DataLoader:
        """The run's loader, set to this epoch's shuffle, seeded by (seed, epoch) so resumed
        epochs repeat exactly. Every batch holds scenes of one exposure count
        (``ExposureGroupedBatchSampler``); the shuffle is drawn from the epoch's generator in one
        process (as ``RandomSampler`` would), from seed + epoch on every rank under torchrun (as
        ``DistributedSampler`` would). One loader serves every epoch: its workers persist, and
        ``EpochSeededBatches`` gives them the seeds a loader built for the epoch would."""
        generator = torch.Generator().manual_seed(epoch_seed(self.args.seed, epoch))
        shuffle = torch.Generator().manual_seed(self.args.seed + epoch) if self.process.distributed else generator
        if self._train_loader is None:
            batches = EpochSeededBatches(ExposureGroupedBatchSampler(
                self.train_set.crop_exposure_counts(), self.args.batch_size, shuffle, self.process.world_size,
                self.process.rank))
            self._train_loader = crop_loader(self.train_set, batches, self.args.num_workers,
                                             pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                                             worker_init_fn=ignore_preemption_signals)
        self._train_loader.batch_sampler.set_epoch(generator, shuffle)
        return self._train_loader

    def train_epoch(self, epoch: int, interrupted: InterruptedEpoch | None = None) -> dict[str, float]:
        """One epoch, or the rest of a preempted one (``interrupted``). A preemption signal ends
        it after the current step: ``last.pth`` keeps that step and ``Preempted`` is raised."""
        args = self.args
        seed_everything(epoch_seed(args.seed, epoch, self.process.rank))
        ratio = mask_ratio(epoch, args.phase1_epochs, args.epochs, args.max_mask_ratio, args.is_curriculum,
                           args.constant_mask_ratio)
        guided = (args.is_guided_mask or args.is_guided_loss) and is_guided_update_epoch(
            epoch, args.phase1_epochs, args.metric_guided_interval)
        if guided and interrupted is None:  # a continued epoch finds its update in the restored tables
            updated = metric_guided_update(self.model, self.guided_set, self.tables, ratio, args, self.process,
                                           self.amp)
            self.log(f"epoch {epoch}: metric-guided update of {updated} segments (R = {ratio:.3f})")
        ratio_table = None
        if ratio > 0 and args.is_mask:
            if args.mask_choice == 0:
                ratio_table = torch.full((1,), ratio, device=self.device)
            else:
                ratio_table = self.tables.ratio if args.is_guided_mask else torch.full_like(self.tables.ratio, ratio)
        weight_table = self.tables.weight if args.is_guided_loss else None
        generator = torch.Generator(device=self.device).manual_seed(epoch_seed(args.seed, epoch, self.process.rank))

        self.train_model.train()
        loader = self.loader(epoch)
        total_steps = len(loader) if args.max_steps is None else min(len(loader), args.max_steps)
        batches = iter(loader)
        sums = {name: 0.0 for name in self.loss_terms}
        first = 0
        if interrupted is not None:
            first = self._continue_epoch(interrupted, batches, generator, total_steps)
            sums = dict(interrupted.sums)
        steps = first
        bar = tqdm(total=total_steps, initial=first, desc=f"epoch {epoch}/{self.last_epoch}", unit="step",
                   disable=args.no_progress or not self.process.is_main, leave=False)
        checks = StepChecks(self.device, sums, self.process.distributed)
        parameters = self.optimizer.param_groups[0]["params"]
        started = time.perf_counter()
        last = None
        for step in range(first, total_steps):
            loaded = next(batches)
            batch = to_network_batch(loaded, self.device)
            last = training_step(self.train_model, batch, self.loss_fn, self.optimizer, ratio_table, weight_table,
                                 self.device, self.amp, self.scaler, generator,
                                 whole_crop_masking=args.mask_choice == 0, segment_ids=self.tables.ids)
            release_batch(loaded)  # its tensors are on the device now, or the CPU's step is done with them
            steps += 1
            failure, stop = checks.after_step(steps, last, parameters, self.preemption.received is not None)
            self._stop_if_diverged(epoch, failure)
            if not bar.disable and (steps % PROGRESS_REFRESH == 0 or steps == total_steps):
                bar.set_postfix(loss=f"{checks.host_sums()['loss'] / steps:.4f}", R=f"{ratio:.2f}")
            bar.update()
            if stop and steps < total_steps:  # after the last step, the epoch's own checkpoint is written
                self._stop_if_diverged(epoch, checks.finish())
                bar.close()
                received = self.preemption.received or ""
                self._preempt(InterruptedEpoch(epoch, steps, checks.host_sums(), received, [
                    {"rng": rng_states(), "mask_generator": generator.get_state(), "signal": received}]))
        self._stop_if_diverged(epoch, checks.finish())
        sums = checks.host_sums()
        bar.close()
        seconds = time.perf_counter() - started
        stats = {key: value / max(steps, 1) for key, value in sums.items()}
        stats.update(lr=self.optimizer.param_groups[0]["lr"], mask_ratio=ratio, seconds=seconds,
                     samples_per_second=(steps - first) * args.batch_size * self.process.world_size
                     / max(seconds, 1e-9))
        self.scheduler.step()
        if last is not None and last["mask_map"] is not None:
            self._last_mask_map = last["mask_map"][0].detach().float().cpu()
        return stats

    def _stop_if_diverged(self, epoch: int, failure: str | None) -> None:
        """Raise ``RunFailed`` for a step whose loss or weights became non-finite (nothing of the
        epoch is saved)."""
        if failure is None:
            return
        kept = f"{self.logdir / 'last.pth'} keeps epoch {self.state.epoch}" if self.state.epoch else \
            "no checkpoint was written"
        raise RunFailed(f"epoch {epoch}, {failure}; nothing of this epoch was saved ({kept}). "
                        f"Lower --lr (now {self.args.lr:g})" + (" or train in float32 (--amp none)" if self.amp else ""))

    def _continue_epoch(self, interrupted: InterruptedEpoch, batches: Any, generator: torch.Generator,
                        total_steps: int) -> int:
        """Draw the batches a preempted epoch trained on (loaded, not trained on: the loader's
        workers and RNGs advance as they did) and put every RNG back as it was after its last
        step; returns the first step to run."""
        first = min(interrupted.step, total_steps)
        for _ in range(first):
            release_batch(next(batches))
        world = self.process.world_size
        if len(interrupted.ranks) == world:
            mine = interrupted.ranks[self.process.rank]
            restore_rng_states(mine["rng"])
            generator.set_state(mine["mask_generator"])
        else:
            self.log(f"note: epoch {interrupted.epoch} stopped with {len(interrupted.ranks)} process(es) and goes on "
                     f"with {world}: from step {first}, but not exactly as it would have")
        self.log(f"epoch {interrupted.epoch}: continuing after step {first} (stopped by {interrupted.signal})")
        return first

    def _preempt(self, interrupted: InterruptedEpoch) -> NoReturn:
        """Save the preempted step and stop (raises ``Preempted``)."""
        path = self.save_interrupted(interrupted)
        self._stop_preempted(f"at epoch {interrupted.epoch} step {interrupted.step}", path, interrupted.signal)

    def _stop_preempted(self, where: str, path: Path, signal_name: str = "") -> NoReturn:
        signal_name = signal_name or self.preemption.received or "a signal to another process"
        message = f"preempted ({signal_name}) {where}: checkpoint written to {path}; run the same command to continue"
        self.log(message)
        raise Preempted(message)

    def evaluate(self) -> dict[str, float]:
        """Test-split means with the evaluation module's metrics. Under torchrun each process
        takes every world_size-th scene and the per-scene rows are gathered, so no process waits
        for another's whole evaluation. Rank 0 keeps its first scene and prediction for TensorBoard."""
        if self.test_set is None:
            return {}

        def keep_first(sample: Mapping[str, Any], prediction: torch.Tensor) -> None:
            if self._first_test_scene is None:
                self._first_test_scene = (sample, prediction)

        self._first_test_scene = None
        mine = Subset(self.test_set, range(self.process.rank, len(self.test_set), self.process.world_size))
        result = evaluate_scenes(unwrap(self.model), mine, self.device, InferenceSettings(amp=self.amp),
                                 progress=not self.args.no_progress and self.process.is_main, on_scene=keep_first)
        return mean_metrics(distributed.gather_objects(result.table.rows))

    def write_scalars(self, epoch: int, stats: Mapping[str, float], metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return

        def write(writer: Any) -> None:
            for key in self.loss_terms:
                writer.add_scalar(f"train/{key}", stats[key], epoch)
            writer.add_scalar("train/learning_rate", stats["lr"], epoch)
            writer.add_scalar("train/mask_ratio", stats["mask_ratio"], epoch)
            writer.add_scalar("train/samples_per_second", stats["samples_per_second"], epoch)
            writer.add_scalar("train/mean_loss_weight", float(self.tables.weight.mean()), epoch)
            for key, value in metrics.items():
                writer.add_scalar(f"test/{key}", value, epoch)
            writer.flush()

        self.writer.write(write)

    def write_images(self, epoch: int) -> None:
        """Reference LDR, μ-law prediction and label of the first test scene (from the last
        evaluation), and the last masked batch's mask map."""
        if self.writer is None or self._first_test_scene is None:
            return
        sample, prediction = self._first_test_scene

        def write(writer: Any) -> None:
            writer.add_image("test/reference_ldr", reference_ldr(sample), epoch, dataformats="HWC")
            writer.add_image("test/prediction_mu", mu_tonemap(prediction), epoch)
            writer.add_image("test/label_mu", mu_tonemap(sample["label"].clamp(0, 1)), epoch)
            if self._last_mask_map is not None:
                writer.add_image("train/mask_map", self._last_mask_map, epoch)

        self.writer.write(write)

    def run(self, until: int | None = None) -> RunState:
        """Train from the start epoch to the phase's last epoch (or to ``until``, inclusive). A
        preemption signal (SIGTERM, SIGUSR1) stops it after the current step with ``Preempted``
        (``last.pth`` keeps that step). The run's lock and logs are closed at the end."""
        self.preemption.install()
        try:
            return self._run(until)
        finally:
            self.close()

    def close(self) -> None:
        """Close the TensorBoard log, put the signal handlers back, end the loader's workers and
        remove the lock (idempotent)."""
        self.preemption.restore()
        if self._train_loader is not None:
            end_workers(self._train_loader)
            self._train_loader = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.lock is not None:
            self.lock.release()

    def _run(self, until: int | None) -> RunState:
        args = self.args
        stop = self.last_epoch if until is None else min(until, self.last_epoch)
        if self.start_epoch > self.last_epoch:
            self.log(f"nothing to train: start epoch {self.start_epoch} is past phase {args.phase}'s last epoch "
                     f"{self.last_epoch}")
            return self.state
        params = sum(p.numel() for p in self.model.parameters())
        self.log(f"phase {args.phase}: epochs {self.start_epoch}-{self.last_epoch}, {len(self.train_set.scene_dirs)} "
                 f"training scenes × repeat {args.repeat}, batch {args.batch_size} × {self.process.world_size} "
                 f"process(es), {params:,} parameters, {self.tables.num_ids} segment IDs, device {self.device}, "
                 f"amp {self.amp or 'fp32'}; logs in {self.logdir}")
        for epoch in range(self.start_epoch, stop + 1):
            interrupted = self._interrupted if self._interrupted is not None and self._interrupted.epoch == epoch \
                else None
            stats = self.train_epoch(epoch, interrupted)
            metrics: dict[str, float] = {}
            if epoch % args.test_interval == 0 or epoch == self.last_epoch:
                metrics = self.evaluate()
                if self.process.is_main:
                    self.write_images(epoch)
            improved = bool(metrics) and metrics["psnr_mu"] > self.state.best_psnr_mu
            if improved:
                self.state.best_psnr_mu = metrics["psnr_mu"]
            self.state.epoch = epoch
            self.state.history.append({"epoch": epoch, **{k: float(v) for k, v in stats.items()},
                                       **{f"test_{k}": float(v) for k, v in metrics.items()}})
            self.write_scalars(epoch, stats, metrics)
            tested = "".join(f", test {k} {v:.4f}" for k, v in metrics.items() if k in ("psnr_mu", "psnr_l", "ssim_mu"))
            terms = ", ".join(f"{name} {stats[name]:.5f}" for name in self.loss_terms[1:])
            self.log(f"epoch {epoch}: loss {stats['loss']:.5f} ({terms}), lr {stats['lr']:.2e}, "
                     f"mask ratio {stats['mask_ratio']:.3f}, {stats['samples_per_second']:.1f} samples/s{tested}")
            failure: RunFailed | None = None
            try:
                self.save(epoch, improved)
            except RunFailed as err:
                failure = err
            # also the end-of-epoch barrier, and where a signal that came after the last step is seen
            saved, preempted = distributed.all_ranks_agree(failure is None, self.preemption.received is not None,
                                                           self.device)
            if not saved:
                raise failure or RunFailed(f"epoch {epoch}: the main process could not save its checkpoint")
            if preempted and epoch < stop:
                self._stop_preempted(f"after epoch {epoch}", self.logdir / "last.pth")
        return self.state


def main(phase: int, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``train_phase1.py`` / ``train_phase2.py``."""
    args = parse_args(phase, argv)
    for note in inert_notes(args, INERT_OPTIONS):
        print(note)

    def train() -> int:
        try:
            Trainer(args).run()
        finally:
            distributed.cleanup()
        return 0

    return run_cli(train, args.debug)
