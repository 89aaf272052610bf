"""Reading and writing SMNet checkpoints.

Accepted formats: the released one (a dict with ``state_dict`` whose keys carry the
``module.`` prefix of DataParallel), a bare state dict, and the project's own checkpoints
(a dict with ``state_dict`` and ``config``). Files are read with ``weights_only=True``: a file
that needs arbitrary unpickling is refused. The derived buffers of the released format
(``relative_position_index``, ``attn_mask``) are dropped; the network recomputes them.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from utils.atomic_io import atomic_path
from utils.cli import UsageError, run_cli
from utils.safe_load import TensorFileError, load_tensors
from utils.safe_paths import refuse_overwriting

from .registry import architecture_name
from .smnet import SMNet

DERIVED_BUFFERS = ("relative_position_index", "attn_mask")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UsageError):
    """A checkpoint file that cannot be read or does not fit the network."""

    exit_code = 1
    """The command lines' code for "a checkpoint failed"."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file safely (tensors and plain containers only)."""
    path = Path(path)
    try:
        data = load_tensors(path, "checkpoint")
    except TensorFileError as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(data).__name__}")
    return data


def strip_wrapper_prefixes(key: str) -> str:
    """A parameter name without the prefixes DataParallel/DDP (``module.``) and torch.compile
    (``_orig_mod.``) add, in any order and number."""
    while key.startswith(WRAPPER_PREFIXES):
        key = next(key[len(p):] for p in WRAPPER_PREFIXES if key.startswith(p))
    return key


def extract_state_dict(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's parameters from any accepted format, without wrapper prefixes or derived buffers."""
    state = data.get("state_dict", data.get("model", data))
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("no state dict found: expected a 'state_dict' entry or a dict of tensors")
    clean = {}
    for key, value in state.items():
        key = strip_wrapper_prefixes(key)
        if key.rsplit(".", 1)[-1] in DERIVED_BUFFERS:
            continue
        clean[key] = value
    return clean


def check_finite(state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuse weights that are not numbers: a NaN or an infinity in any tensor would turn every
    output into NaN (black images, NaN metrics) without an error."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: tensor {key} holds {bad} NaN or infinite value(s) of {value.numel()}; "
                                  "the checkpoint is broken (a diverged run?) and is not used")


def infer_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Constructor options implied by a state dict's shapes (the released layout)."""
    try:
        embed_dim, in_chans = state["conv_first.0.weight"].shape[:2]
        depths, num_heads = [], []
        for stage in range(len([k for k in state if re.fullmatch(r"layers\.\d+\.conv\.weight", k)])):
            blocks = {int(m.group(1)) for k in state
                      if (m := re.match(rf"layers\.{stage}\.residual_group\.blocks\.(\d+)\.", k))}
            depths.append(len(blocks))
            table = state[f"layers.{stage}.residual_group.blocks.0.attn.relative_position_bias_table"]
            num_heads.append(table.shape[1])
        window_size = (round(table.shape[0] ** 0.5) + 1) // 2
        hidden = state["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
        channel_hidden = state["channel_layers.0.mlp.fc1.weight"].shape[0]
    except (KeyError, UnboundLocalError) as err:
        raise CheckpointError(f"not an SMNet state dict (missing {err})") from None
    return dict(in_chans=int(in_chans), embed_dim=int(embed_dim), depths=depths, num_heads=num_heads,
                window_size=window_size, mlp_ratio=hidden / embed_dim, channel_mlp_ratio=channel_hidden / embed_dim)


def _first(items: list[str], count: int = 5) -> str:
    shown = ", ".join(items[:count])
    return shown + (f", … ({len(items)} in all)" if len(items) > count else "")


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load parameters by name and shape, every one required; a mismatch lists what differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshaped:
        lines = [f"{source} does not fit this network ({type(model).__name__}):"]
        if missing:
            lines.append(f"  missing keys: {_first(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {_first(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped (checkpoint vs network): {_first(misshaped)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def model_from_checkpoint(data: Mapping[str, Any], source: str | os.PathLike, **overrides: Any) -> SMNet:
    """An SMNet built for a read checkpoint and holding its weights (on the CPU).

    The architecture comes from the checkpoint's ``config`` when present, else from its shapes;
    ``overrides`` (e.g. ``is_mask``, ``adl_drop_rate``) replace options that shapes cannot tell.
    Errors name ``source``.
    """
    try:
        state = extract_state_dict(data)
        config = dict(data.get("config") or infer_config(state))
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    check_finite(state, source)
    config.update(overrides)
    try:
        model = SMNet(**config)
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as err:
        raise CheckpointError(f"{source}: its config {config} does not describe a network ({err})") from None
    load_state_dict_strict(model, state, source=str(source))
    return model


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu", **overrides: Any) -> SMNet:
    """Build an SMNet that fits the checkpoint at ``path`` and load its weights (see
    ``model_from_checkpoint``)."""
    return model_from_checkpoint(read_checkpoint(path), path, **overrides).to(device)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through ``utils.atomic_io.atomic_path``: a crash never leaves a truncated
    checkpoint behind. The file is serialised in memory and written by Python, so a failed write
    (a full disk) is the OSError it is (ENOSPC, naming ``path``), not torch's RuntimeError."""
    try:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            handle.write(buffer.getbuffer())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None


def save_model(path: str | os.PathLike, model: nn.Module, **extra: Any) -> None:
    """Write the project's checkpoint format: ``state_dict`` (no prefix), ``config`` and extras."""
    net = unwrap(model)
    atomic_save({"state_dict": net.state_dict(), "config": dict(net.config),
                 "architecture": architecture_name(net.config), **extra}, path)


def released_state_dict(model: SMNet) -> dict[str, torch.Tensor]:
    """The state dict in the released layout: ``module.`` prefix and the derived buffers, computed
    for the configured ``img_size``, so the released scripts can load it."""
    from .window_attention import relative_position_index, shift_attention_mask

    out = {}
    if getattr(model, "reference_residual", False):
        raise ValueError("a reference_residual network has no released form: the released code would run its "
                         "weights as the plain network")
    for name, value in model.state_dict().items():
        out[f"module.{name}"] = value
        if name.endswith("norm1.weight") and ".residual_group.blocks." in name:
            block_name = name[: -len("norm1.weight")]
            block = model.get_submodule(block_name.rstrip("."))
            ws = block.window_size
            if block.shift_size > 0:
                size = model.config["img_size"]
                out[f"module.{block_name}attn_mask"] = shift_attention_mask(size, size, ws, block.shift_size).clone()
            out[f"module.{block_name}attn.relative_position_index"] = relative_position_index(ws).clone()
    return out


def export_weights(source: str | os.PathLike, target: str | os.PathLike, **extra: Any) -> None:
    """Write only the weights and ``config`` of a training checkpoint (no optimiser, tables or
    RNG state): the small file to share or ship. ``extra`` fields (e.g. provenance) are kept."""
    data = read_checkpoint(source)
    model = model_from_checkpoint(data, source)
    keep = {key: data[key] for key in ("epoch", "phase") if key in data}
    save_model(target, model, **keep, **extra)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.checkpoint export TRAINING_CHECKPOINT OUT.pth``."""
    import argparse

    parser = argparse.ArgumentParser(description="Checkpoint tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="keep only the weights and config of a training checkpoint")
    export.add_argument("source", type=Path)
    export.add_argument("target", type=Path)
    export.add_argument("--overwrite", action="store_true", help="replace an existing target file")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    args = parser.parse_args(argv)

    def export() -> int:
        refuse_overwriting([args.target], [args.source], how="the export's target")
        if args.target.is_dir():
            raise UsageError(f"{args.target} is a folder; give the file to write")
        if args.target.exists() and not args.overwrite:
            raise UsageError(f"{args.target} exists; pass --overwrite to replace it")
        export_weights(args.source, args.target)
        print(f"wrote {args.target} ({args.target.stat().st_size / 1e6:.1f} MB)")
        return 0

    return run_cli(export, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
