"""Full-image inference: the released test protocol (pad to a multiple, one pass, clamp, crop),
and a tiled mode for images too large for the accelerator's memory.

The released evaluation pads every test image by reflection at the bottom and right to a
multiple of 128 before the forward pass; the metric-guided training pass pads to a multiple
of 16. ``reconstruct`` keeps both available so results match the released numbers exactly.

``reconstruct_tiled`` runs overlapping tiles through ``reconstruct`` one at a time and blends
them with raised-cosine ramps on the host, so the device's peak memory depends on the tile
size only. The network's channel attention (ICAB) pools over the whole image, so tiled output
is close to, but not the same as, one pass; with a tile at least as large as the image it is
the same computation as ``reconstruct``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .padding import pad_to_multiple

TEST_PAD_MULTIPLE = 128
"""Padding multiple of the released test protocol."""

GUIDED_PAD_MULTIPLE = 16
"""Padding multiple of the metric-guided pass over the training scenes."""


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast precisions by their option name; None (or 'none', 'fp32') is float32."""


def normalise_amp(amp: str | None) -> str | None:
    """``--amp``'s value as a key of ``AMP_DTYPES``, or None for float32 (ValueError otherwise)."""
    if amp in (None, "", "none", "fp32"):
        return None
    amp = {"bfloat16": "bf16", "float16": "fp16"}.get(amp, amp)
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown --amp {amp!r}: use bf16 or fp16")
    return amp


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {None, 'bf16', 'fp16'} on ``device``."""
    amp = normalise_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def resolve_amp(amp: str | None, device: torch.device | str) -> tuple[str | None, str | None]:
    """The autocast mode to use on ``device`` for a requested ``amp`` and a note when it changes.

    None/'none'/'fp32' mean float32. On CUDA, bf16 and fp16 are used as asked. On the CPU, bf16 is
    kept (CPU autocast supports it) and fp16 falls back to float32 with a note, since CPU
    kernels for float16 are slow or missing.
    """
    amp = normalise_amp(amp)
    if torch.device(device).type != "cuda" and amp == "fp16":
        return None, f"fp16 autocast is not supported on {torch.device(device).type}; running in float32 instead"
    return amp, None


@torch.inference_mode()
def reconstruct(model: nn.Module, inputs: torch.Tensor, multiple: int = TEST_PAD_MULTIPLE,
                amp: str | None = None) -> torch.Tensor:
    """One-pass reconstruction of B×(6n)×H×W inputs: pad to ``multiple``, forward, clamp to
    [0, 1], crop back to H×W. Returns float32 B×3×H×W on the inputs' device."""
    height, width = inputs.shape[-2:]
    with autocast_context(inputs.device, amp):
        out = model(pad_to_multiple(inputs, multiple))
    return out[..., :height, :width].float().clamp(0.0, 1.0)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------
# Tiled inference
# ---------------------------------------------------------------------------

def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap``
    pixels shared by neighbours; the first starts at 0, the last ends at ``length``, the rest
    are evenly spaced. A single tile (start 0) when ``tile >= length``."""
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got {overlap} for tile {tile}")
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _raised_cosine(length: int, rising: bool) -> torch.Tensor:
    """``length`` samples of a ramp from 0 to 1 (``rising``) or 1 to 0, taken at pixel centres;
    a rising and a falling ramp of the same length sum to 1 sample by sample."""
    position = (torch.arange(length, dtype=torch.float64) + 0.5) / length
    up = torch.sin(0.5 * math.pi * position) ** 2
    return up if rising else 1.0 - up


def blend_weights_1d(length: int, tile: int, overlap: int) -> list[tuple[int, torch.Tensor]]:
    """(start, weights) per tile along one axis: 1 inside, raised-cosine ramps across each region
    shared with a neighbour, normalised so that the weights of all tiles sum to 1 at every pixel."""
    starts = tile_starts(length, tile, overlap)
    ends = [min(start + tile, length) for start in starts]
    windows = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        weights = torch.ones(end - start, dtype=torch.float64)
        if i > 0:  # ramp up across the region shared with the previous tile
            shared = ends[i - 1] - start
            weights[:shared] *= _raised_cosine(shared, rising=True)
        if i + 1 < len(starts):  # ramp down across the region shared with the next tile
            shared = end - starts[i + 1]
            weights[end - start - shared:] *= _raised_cosine(shared, rising=False)
        windows.append(weights)
    total = torch.zeros(length, dtype=torch.float64)
    for start, weights in zip(starts, windows):
        total[start:start + weights.numel()] += weights
    return [(start, (weights / total[start:start + weights.numel()]).float())
            for start, weights in zip(starts, windows)]


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.inference_mode()
def reconstruct_tiled(model: nn.Module, inputs: torch.Tensor, tile: int, overlap: int = 32,
                      amp: str | None = None, multiple: int = TEST_PAD_MULTIPLE,
                      device: torch.device | str | None = None,
                      on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """Reconstruct B×(6n)×H×W inputs tile by tile; returns float32 B×3×H×W on the CPU.

    Tiles are ``tile``×``tile`` (smaller where the image is), overlap by at least ``overlap``
    pixels, and each goes through ``reconstruct`` (padded by reflection to ``multiple``, clamped).
    The overlaps are blended with separable raised-cosine weights that sum to 1 at every pixel.
    Only one tile at a time is on ``device`` (default: the model's); the output is accumulated
    in host memory, so the device's peak memory does not grow with the image. With ``tile`` at
    least the image's size the result is exactly that of ``reconstruct``. ``on_tile()`` is
    called after every tile (a progress bar).
    """
    device = _model_device(model) if device is None else torch.device(device)
    batch, _, height, width = inputs.shape
    rows = blend_weights_1d(height, tile, overlap)
    cols = blend_weights_1d(width, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        output = reconstruct(model, inputs.to(device), multiple, amp).cpu()
        if on_tile is not None:
            on_tile()
        return output
    output = torch.zeros(batch, 3, height, width, dtype=torch.float32)
    for top, row_weights in rows:
        bottom = top + row_weights.numel()
        for left, col_weights in cols:
            right = left + col_weights.numel()
            piece = reconstruct(model, inputs[..., top:bottom, left:right].to(device), multiple, amp).cpu()
            output[..., top:bottom, left:right] += piece * (row_weights[:, None] * col_weights[None, :])
            if on_tile is not None:
                on_tile()
    return output.clamp_(0.0, 1.0)  # a convex blend of clamped tiles; the clamp only absorbs rounding


# ---------------------------------------------------------------------------
# The settings that travel together
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class InferenceSettings:
    """How a full image goes through the network: padding multiple, tiles, autocast precision.

    The defaults are the released test protocol: reflection padding to a multiple of 128, one
    pass, float32.
    """

    pad_multiple: int = TEST_PAD_MULTIPLE
    tile: int = 0
    tile_overlap: int = 32
    amp: str | None = None

    def __post_init__(self) -> None:
        if self.pad_multiple < 1:
            raise ValueError(f"the padding multiple must be positive (got {self.pad_multiple})")
        if self.tile < 0 or (self.tile and not 0 <= self.tile_overlap < self.tile):
            raise ValueError(f"the tile size must be >= 0 and the overlap in [0, tile) "
                             f"(got {self.tile}, {self.tile_overlap})")
        if 0 < self.tile < self.pad_multiple:
            raise ValueError(f"a tile of {self.tile} is smaller than the padding multiple {self.pad_multiple}: every "
                             "tile would be padded to the multiple, costing time and accuracy; use tiles of at least "
                             "the multiple (or a lower multiple)")

    def describe(self) -> dict[str, Any]:
        """The settings and what they mean, as recorded in summary.json."""
        tiled = self.tile > 0
        return {
            **asdict(self),
            "amp": self.amp or "fp32",
            "tile_overlap": self.tile_overlap if tiled else 0,
            "mode": "tiled" if tiled else "one pass (released protocol)",
            "padding": f"reflection at the bottom and right to a multiple of {self.pad_multiple}"
                       + (" (per tile)" if tiled else ""),
            "clamp": [0.0, 1.0],
            "crop": "back to the input's size",
            "mask_map": None,
            "tile_blend": "separable raised-cosine ramps across overlaps, weights summing to 1" if tiled else None,
        }


def predict(model: nn.Module, inputs: torch.Tensor, device: torch.device | str,
            settings: InferenceSettings = InferenceSettings(),
            on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """B×3×H×W float32 CPU prediction of CPU inputs: one pass on ``device``, or tiles (only one
    tile on the device at a time) when ``settings.tile`` is set; ``on_tile()`` follows every tile
    (the one pass counts as one). Inputs that are not all finite numbers are refused (ValueError):
    they could only give a NaN image."""
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("the network input holds NaN or infinite values (check the exposure values)")
    if settings.tile > 0:
        return reconstruct_tiled(model, inputs, settings.tile, settings.tile_overlap, settings.amp,
                                 settings.pad_multiple, device=device, on_tile=on_tile)
    output = reconstruct(model, inputs.to(device), settings.pad_multiple, settings.amp).cpu()
    if on_tile is not None:
        on_tile()
    return output
