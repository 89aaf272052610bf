"""Merging exposure brackets into HDR images from Python: the network loaded once, then any
number of brackets given as arrays or files, as ``predict.py`` does from the command line.

    merger = HDRMerger("pretrain_model/demo_smnet.pth", device="cuda", amp="bf16")
    hdr = merger.merge(frames, stops=[0, 2, 4])              # H×W×3 float32 linear radiance
    hdr, preview = merger.merge_files("photos/hall", preview=True)

Frames are linearised with the camera's response and re-encoded with gamma 2.2 as the network
expects (``datasets.response``), registered to the middle exposure (``datasets.align``), and go
through the network in one pass or in tiles (``models.tiling``). ``merge_network_input`` is the
bare forward of the released test protocol, which ``evaluation.evaluate`` uses for ``test.py``.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from datasets.align import align_bracket, warp_frame
from datasets.bracket import BracketSource, find_bracket, load_bracket
from datasets.preprocess import build_network_input
from datasets.response import (
    BracketResponse,
    Response,
    bracket_response,
    response_option,
)
from models.channel_attention import channel_attention_heads
from models.checkpoint import load_model, model_from_checkpoint, unwrap
from models.inference import (
    TEST_PAD_MULTIPLE,
    InferenceSettings,
    eval_mode,
    predict,
    resolve_amp,
)
from models.tiling import AUTO_TILES, auto_tile, tile_count
from utils.tonemap import tonemap_for_display

AUTO = "auto"
"""``tile=AUTO``: one pass when it fits in memory, else the largest tile that does."""
ESTIMATE_CROP = 512
"""Side of the crop timed to estimate a one-pass run over a large image."""
FRAME_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): float(2**16)}
"""What integer frames are divided by: as ``utils.image_io`` reads 8- and 16-bit files."""

Checkpoint = str | os.PathLike | Mapping[str, Any] | nn.Module
PathLike = str | os.PathLike


@dataclass(frozen=True)
class PreparedBracket:
    """Frames as the network expects them (gamma 2.2, registered), the response chosen and how
    the frames were aligned."""

    ldrs: np.ndarray
    response: BracketResponse
    alignment: str


@dataclass(frozen=True)
class MergeResult:
    """A merged bracket: ``hdr`` H×W×3 float32 linear radiance (1.0 = white of the shortest
    exposure), the response and alignment used, the inference settings and the network's seconds."""

    hdr: np.ndarray
    response: BracketResponse
    alignment: str
    settings: InferenceSettings
    network_seconds: float

    def preview(self, operator: str = "reinhard") -> np.ndarray:
        """The tone-mapped H×W×3 uint8 preview (``utils.tonemap.tonemap_for_display``)."""
        return tonemap_for_display(self.hdr, operator)


@dataclass(frozen=True)
class RunEstimate:
    """How long a run is expected to take, from one timed tile (or crop)."""

    seconds: float
    per_unit: float
    units: int
    unit: str  # "tile" or "MP"

    def describe(self) -> str:
        """E.g. ``about 3 min (0.9 s per tile × 210 tiles)``."""
        plural = "s" if self.unit == "tile" and self.units != 1 else ""
        count = f"{self.units}" if self.unit == "tile" else f"{self.units / 1e6:.1f}"
        per = "MP" if self.unit == "MP" else "tile"
        return f"about {format_duration(self.seconds)} ({self.per_unit:.2g} s per {per} × {count} {self.unit}{plural})"


def format_duration(seconds: float) -> str:
    """A rounded duration: ``40 s``, ``3 min``, ``1 h 5 min``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def as_unit_frames(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """n×H×W×3 frames (float in [0, 1], uint8 or uint16) as float32 in [0, 1]; ValueError otherwise."""
    array = np.stack([np.asarray(f) for f in frames]) if not isinstance(frames, np.ndarray) else frames
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected frames of shape n×H×W×3, got {array.shape}")
    if array.dtype in FRAME_SCALES:
        return array.astype(np.float32) / np.float32(FRAME_SCALES[array.dtype])
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected float frames in [0, 1] or uint8/uint16 frames, got {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError("the frames hold NaN or infinite values")
    return np.clip(array, 0.0, 1.0).astype(np.float32, copy=False)


def check_stops(stops: Sequence[float], count: int) -> tuple[float, ...]:
    """One finite, increasing stop per frame (shortest exposure first); ValueError otherwise."""
    values = tuple(float(s) for s in stops)
    if len(values) != count:
        raise ValueError(f"{len(values)} stops for {count} frames")
    if not all(math.isfinite(v) for v in values) or any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"stops must be finite and increasing (shortest exposure first), got {values}")
    return values


def linearise_and_align(frames: np.ndarray, stops: Sequence[float], reference: int, response: str | Response | None,
                        benchmark_folder: bool, align: bool, motion: str = "euclidean"
                        ) -> tuple[np.ndarray, BracketResponse, str]:
    """Frames as the network expects them: linearised with the bracket's camera response
    (``datasets.response.bracket_response``) and re-encoded with gamma 2.2, then, with ``align``,
    registered to the reference (on the re-encoded frames, which ``align_bracket`` expects). A
    response estimated from the frames is estimated again on frames registered with the first
    estimate, which constrain it better, and kept when they agree better; the registration is then
    found again with it, so that the saved response given as a file reproduces the result. Returns
    the frames, the response chosen and how the frames were aligned."""
    chosen = bracket_response(response, frames, stops, benchmark_folder)
    if align and chosen.estimated:
        _, warps = align_bracket(chosen.response.to_gamma(frames), stops, reference, motion)
        registered = np.stack([warp_frame(frame, warp) for frame, (warp, _) in zip(frames, warps)])
        again = bracket_response(response, registered, stops, benchmark_folder)
        chosen = again if again.better_than(chosen) else chosen
    ldrs = chosen.response.to_gamma(frames)
    if not align:
        return ldrs, chosen, "not aligned"
    ldrs, warps = align_bracket(ldrs, stops, reference, motion)
    return ldrs, chosen, "aligned (" + ", ".join(method for _, method in warps if method != "reference") + ")"


def _response(option: str | os.PathLike | Response | None) -> str | Response | None:
    """A response argument as ``bracket_response`` takes it (a file name is read)."""
    if option is None or isinstance(option, Response):
        return option
    return response_option(os.fspath(option))


def _network(checkpoint: Checkpoint, device: torch.device) -> nn.Module:
    if isinstance(checkpoint, nn.Module):
        return checkpoint.to(device)
    if isinstance(checkpoint, Mapping):
        return model_from_checkpoint(checkpoint, "the checkpoint given").to(device)
    return load_model(checkpoint, device=device)


class HDRMerger:
    """A network loaded once, merging brackets into linear HDR images.

    ``checkpoint``: a file, a checkpoint or state dict, or a network. ``tile``: ``"auto"`` (one
    pass when the estimated memory fits the device, else the largest of 2048/1024/512/256 that
    does), 0 (one pass, the released protocol) or a tile size; ``amp``: None, "bf16" or "fp16"
    (float32 on the CPU, with ``amp_note`` saying so).
    """

    def __init__(self, checkpoint: Checkpoint, device: torch.device | str = "cpu", amp: str | None = None,
                 tile: int | str = AUTO, tile_overlap: int = 32, pad_multiple: int = TEST_PAD_MULTIPLE) -> None:
        if tile != AUTO and (not isinstance(tile, int) or tile < 0):
            raise ValueError(f"tile must be 'auto', 0 (one pass) or a tile size, got {tile!r}")
        InferenceSettings(pad_multiple, min(AUTO_TILES) if tile == AUTO else tile, tile_overlap)  # checks them
        self.device = torch.device(device)
        self.amp, self.amp_note = resolve_amp(amp, self.device)
        self.tile, self.tile_overlap, self.pad_multiple = tile, tile_overlap, pad_multiple
        self.model = _network(checkpoint, self.device).eval()
        self._fixed: InferenceSettings | None = None

    @classmethod
    def from_model(cls, model: nn.Module, device: torch.device | str,
                   settings: InferenceSettings | None = None) -> HDRMerger:
        """A merger around a network already built, with fixed settings (``test.py``'s protocol);
        the network stays where it is and keeps its train/eval mode between calls."""
        settings = settings or InferenceSettings()
        merger = cls.__new__(cls)
        merger.device, merger.model, merger._fixed = torch.device(device), model, settings
        merger.amp, merger.amp_note = settings.amp, None
        merger.tile, merger.tile_overlap, merger.pad_multiple = settings.tile, settings.tile_overlap, settings.pad_multiple
        return merger

    # --- the network ------------------------------------------------------------------------

    def settings_for(self, size: tuple[int, int]) -> InferenceSettings:
        """The inference settings for an H×W image (automatic tiling resolved)."""
        if self._fixed is not None:
            return self._fixed
        tile = auto_tile(size, unwrap(self.model).embed_dim, self.device, self.pad_multiple) \
            if self.tile == AUTO else self.tile
        return InferenceSettings(self.pad_multiple, tile, self.tile_overlap, self.amp)

    def check_exposure_count(self, count: int) -> None:
        """ValueError when the network cannot merge ``count`` exposures (its width must divide)."""
        model = unwrap(self.model)
        channel_attention_heads(model.embed_dim, count, model.ca_heads_per_exposure)

    def merge_network_input(self, inputs: torch.Tensor, settings: InferenceSettings | None = None,
                            on_tile: Callable[[], None] | None = None) -> torch.Tensor:
        """B×3×H×W float32 CPU output for B×(6n)×H×W network inputs (``build_network_input``),
        with ``settings`` or those of ``settings_for``; ``on_tile()`` follows every tile."""
        settings = settings or self.settings_for(tuple(inputs.shape[-2:]))
        with eval_mode(self.model):
            return predict(self.model, inputs, self.device, settings, on_tile)

    def estimate(self, inputs: torch.Tensor, settings: InferenceSettings) -> RunEstimate:
        """How long ``merge_network_input(inputs, settings)`` should take: one tile timed, times
        the tiles; for one pass, a crop of ``ESTIMATE_CROP`` timed, scaled by the pixels."""
        height, width = inputs.shape[-2:]
        side = settings.tile or ESTIMATE_CROP
        crop = inputs[..., :min(side, height), :min(side, width)]
        start = time.perf_counter()
        self.merge_network_input(crop, InferenceSettings(settings.pad_multiple, 0, 0, settings.amp))
        seconds = time.perf_counter() - start
        if settings.tile:
            tiles = tile_count((height, width), settings.tile, settings.tile_overlap)
            return RunEstimate(seconds * tiles, seconds, tiles, "tile")
        padded = [-(-s // settings.pad_multiple) * settings.pad_multiple for s in (height, width, *crop.shape[-2:])]
        per_mp = seconds / (padded[2] * padded[3] / 1e6)
        return RunEstimate(per_mp * padded[0] * padded[1] / 1e6, per_mp, height * width, "MP")

    # --- brackets ---------------------------------------------------------------------------

    def prepare(self, frames: np.ndarray | Sequence[np.ndarray], stops: Sequence[float],
                response: str | os.PathLike | Response | None = None, align: bool | None = None,
                motion: str = "euclidean", benchmark_folder: bool = False) -> PreparedBracket:
        """Frames linearised with ``response`` (None: ``auto``, or ``gamma`` for a benchmark
        folder; "gamma", "srgb", a curve file or a ``Response``), re-encoded with gamma 2.2 and,
        with ``align`` (default: on, except for a benchmark folder), registered to the middle one."""
        ldrs = as_unit_frames(frames)
        stops = check_stops(stops, len(ldrs))
        align = not benchmark_folder if align is None else align
        ldrs, chosen, alignment = linearise_and_align(ldrs, stops, len(ldrs) // 2, _response(response),
                                                      benchmark_folder, align, motion)
        return PreparedBracket(ldrs, chosen, alignment)

    def merge_prepared(self, prepared: PreparedBracket, stops: Sequence[float],
                       settings: InferenceSettings | None = None,
                       on_tile: Callable[[], None] | None = None) -> MergeResult:
        """The network's merge of prepared frames."""
        self.check_exposure_count(len(prepared.ldrs))
        inputs = torch.from_numpy(build_network_input(prepared.ldrs, stops))[None]
        settings = settings or self.settings_for(tuple(inputs.shape[-2:]))
        start = time.perf_counter()
        output = self.merge_network_input(inputs, settings, on_tile)
        hdr = output[0].permute(1, 2, 0).contiguous().numpy()
        return MergeResult(hdr, prepared.response, prepared.alignment, settings, time.perf_counter() - start)

    def merge_details(self, frames: np.ndarray | Sequence[np.ndarray], stops: Sequence[float],
                      response: str | os.PathLike | Response | None = None, align: bool | None = None,
                      motion: str = "euclidean", benchmark_folder: bool = False) -> MergeResult:
        """``merge`` with what was used: the response, the alignment, the settings, the seconds."""
        prepared = self.prepare(frames, stops, response, align, motion, benchmark_folder)
        return self.merge_prepared(prepared, check_stops(stops, len(prepared.ldrs)))

    def merge(self, frames: np.ndarray | Sequence[np.ndarray], stops: Sequence[float],
              response: str | os.PathLike | Response | None = None, align: bool | None = None,
              preview: bool = False, operator: str = "reinhard") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Merge n×H×W×3 frames (float in [0, 1], uint8 or uint16; shortest exposure first) taken
        ``stops`` apart into H×W×3 float32 linear radiance; with ``preview``, also the uint8
        tone-mapped preview. ``response`` and ``align`` as ``prepare`` takes them."""
        result = self.merge_details(frames, stops, response, align)
        return (result.hdr, result.preview(operator)) if preview else result.hdr

    def merge_source(self, source: BracketSource, response: str | os.PathLike | Response | None = None,
                     align: bool | None = None, motion: str = "euclidean") -> MergeResult:
        """Merge a bracket found by ``datasets.bracket.find_bracket`` (frames decoded upright)."""
        return self.merge_details(load_bracket(source).ldrs, source.stops, response, align, motion,
                                  source.from_exposure_file)

    def merge_files(self, inputs: PathLike | Sequence[PathLike], stops: Sequence[float] | None = None,
                    response: str | os.PathLike | Response | None = None, align: bool | None = None,
                    preview: bool = False, operator: str = "reinhard") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``merge`` for a bracket folder or a list of image files, exposures from ``stops`` (one
        per file in sorted-name order), the folder's exposure.txt or EXIF, as ``predict.py`` finds them."""
        paths = inputs if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
        result = self.merge_source(find_bracket(paths, stops), response, align)
        return (result.hdr, result.preview(operator)) if preview else result.hdr
