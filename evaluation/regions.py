"""Metrics by region: where a reconstruction's error comes from.

Every labelled scene is split into three regions that partition its pixels:

- ``clipped``: the reference exposure (the middle LDR, index n//2) is saturated (any channel at or
  above ``clip_high``) or crushed (every channel at or below ``clip_low``), dilated by
  ``clip_dilation`` pixels. There the network must take the content from the other exposures.
- ``moving``: not clipped, and some non-reference exposure, normalised to the label's units
  (LDR**2.2 / 2**stop), disagrees with the label beyond its noise and beyond a shift of
  ``align_radius`` pixels (see ``motion_score``), dilated by ``motion_dilation`` pixels. There
  the network must avoid ghosts.
- ``static``: the rest, well exposed in the reference and consistent across the frames.

Per region, PSNR-μ and PSNR-l are those of ``evaluation.metrics`` on the region's pixels only
(same μ-law, data range 1, MSE over the region's pixels and channels); ``pixel_share`` is the
region's fraction of the pixels and ``error_share`` its fraction of the scene's summed squared
μ-law error. An empty region scores NaN and is left out of the means over scenes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from datasets.preprocess import sample_exposures
from evaluation.baselines import linearize
from evaluation.metrics import ImageLike, as_hwc_array, psnr
from evaluation.tables import format_table
from utils.tonemap import GAMMA, mu_tonemap

REGIONS = ("clipped", "moving", "static")
"""Region names; a region map holds each pixel's index into this tuple."""
CLIPPED, MOVING, STATIC = range(len(REGIONS))
REGION_METRICS = ("psnr_mu", "psnr_l", "pixel_share", "error_share")
"""Per-region values of one scene; the means over scenes add ``num_scenes``."""
REGION_KEY = "region"


@dataclass(frozen=True)
class RegionSettings:
    """Thresholds of the region split (see the module docstring and docs/EVALUATION.md).

    LDR thresholds are on the display-referred values in [0, 1]; ``noise_ldr`` is the standard
    deviation of an LDR value (sensor noise and quantisation together) assumed at every level.
    """

    clip_high: float = 0.95
    clip_low: float = 0.02
    clip_dilation: int = 2
    noise_ldr: float = 0.01
    noise_factor: float = 3.0
    relative_tolerance: float = 0.05
    align_radius: int = 3
    median_size: int = 3
    motion_dilation: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < self.clip_high <= 1.0:
            raise ValueError(f"need 0 <= clip_low < clip_high <= 1, got {self.clip_low} and {self.clip_high}")
        if min(self.clip_dilation, self.motion_dilation, self.align_radius) < 0:
            raise ValueError("dilations and the alignment radius must be >= 0 pixels")
        if self.noise_ldr <= 0 or self.noise_factor <= 0 or self.relative_tolerance < 0:
            raise ValueError("noise_ldr and noise_factor must be positive, relative_tolerance >= 0")
        if self.median_size not in (1, 3, 5):
            raise ValueError(f"median_size must be 1 (none), 3 or 5, got {self.median_size}")


# ---------------------------------------------------------------------------
# Region masks
# ---------------------------------------------------------------------------

def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """A boolean mask grown by ``radius`` pixels (elliptical structuring element)."""
    if radius <= 0 or not mask.any():
        return mask.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def clipped_mask(reference_ldr: np.ndarray, settings: RegionSettings = RegionSettings()) -> np.ndarray:
    """Pixels the reference LDR (H×W×3 in [0, 1]) saturates or crushes, dilated."""
    ldr = np.asarray(reference_ldr, dtype=np.float32)
    clipped = (ldr.max(axis=2) >= settings.clip_high) | (ldr.max(axis=2) <= settings.clip_low)
    return dilate(clipped, settings.clip_dilation)


def local_range(image: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel minimum and maximum of an H×W×C image over a disc of ``radius`` pixels."""
    if radius <= 0:
        return image, image
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    image = np.ascontiguousarray(image, dtype=np.float32)
    return (cv2.erode(image, kernel, borderType=cv2.BORDER_REPLICATE).reshape(image.shape),
            cv2.dilate(image, kernel, borderType=cv2.BORDER_REPLICATE).reshape(image.shape))


def motion_score(ldr: np.ndarray, stop: float, label: np.ndarray,
                 settings: RegionSettings = RegionSettings()) -> np.ndarray:
    """How far one exposure disagrees with the label, in units of its tolerance (> 1: moved).

    The exposure is linearised (H = LDR**2.2 / 2**stop) and both H and the label are clamped to
    the radiance range this exposure renders well (LDR in [clip_low, clip_high]), so a pixel
    counts only where the frame or the label is well exposed in it, and a frame clipped where the
    label says it should not be (or the reverse) still counts. A frame value agrees when it lies
    between the label's minimum and maximum within ``align_radius`` pixels (a small camera shake
    or resampling is not motion); the excess outside that range is divided by the tolerance at
    the nearest label value y: ``noise_factor`` times the LDR noise carried to radiance,
    2.2·L**1.2·noise_ldr / t with L the LDR value y renders to, plus ``relative_tolerance``·y for
    response and label-storage error. The score is the worst channel, median filtered to drop
    isolated noisy pixels.
    """
    time = 2.0 ** float(stop)
    low, high = settings.clip_low**GAMMA / time, settings.clip_high**GAMMA / time
    frame = np.clip(linearize(ldr, stop).astype(np.float64), low, high)
    label_low, label_high = local_range(np.clip(np.asarray(label, dtype=np.float32), low, high),
                                        settings.align_radius)
    expected = np.clip(frame, label_low, label_high)
    level = (expected * time) ** (1.0 / GAMMA)
    tolerance = (settings.noise_factor * GAMMA * level ** (GAMMA - 1.0) * settings.noise_ldr / time
                 + settings.relative_tolerance * expected)
    score = (np.abs(frame - expected) / tolerance).max(axis=2).astype(np.float32)
    return cv2.medianBlur(score, settings.median_size) if settings.median_size > 1 else score


def moving_mask(ldrs: Sequence[np.ndarray], stops: Sequence[float], label: np.ndarray,
                settings: RegionSettings = RegionSettings()) -> np.ndarray:
    """Pixels where some non-reference exposure disagrees with the label (``motion_score`` > 1), dilated."""
    reference = len(ldrs) // 2
    moved = np.zeros(np.asarray(label).shape[:2], dtype=bool)
    for index, (ldr, stop) in enumerate(zip(ldrs, stops)):
        if index != reference:
            moved |= motion_score(ldr, stop, label, settings) > 1.0
    return dilate(moved, settings.motion_dilation)


def region_map(ldrs: Sequence[np.ndarray], stops: Sequence[float], label: ImageLike,
               settings: RegionSettings = RegionSettings()) -> np.ndarray:
    """H×W uint8 map of region indices (``CLIPPED``, ``MOVING``, ``STATIC``) of one scene:
    LDRs shortest first, their stops, and the label (H×W×3, or a 3×H×W tensor)."""
    label = as_hwc_array(label)
    regions = np.full(label.shape[:2], STATIC, dtype=np.uint8)
    regions[moving_mask(ldrs, stops, label, settings)] = MOVING
    regions[clipped_mask(ldrs[len(ldrs) // 2], settings)] = CLIPPED
    return regions


def sample_region_map(sample: Mapping[str, object], settings: RegionSettings = RegionSettings()) -> np.ndarray:
    """``region_map`` of a labelled sample of ``HDRFullImageDataset``."""
    ldrs, stops = sample_exposures(sample)
    return region_map(ldrs, stops, torch.as_tensor(sample["label"]), settings)


# ---------------------------------------------------------------------------
# Metrics by region
# ---------------------------------------------------------------------------

def region_metrics(pred: ImageLike, label: ImageLike, regions: np.ndarray) -> dict[str, dict[str, float]]:
    """PSNR-μ, PSNR-l, pixel share and error share of every region of ``regions`` (an H×W map).

    PSNR is ``evaluation.metrics.psnr`` on the region's pixels (inf where the prediction equals
    the label there, NaN for an empty region); the error share is NaN when the whole prediction
    is exact.
    """
    pred, label = as_hwc_array(pred), as_hwc_array(label)
    if pred.shape != label.shape or pred.shape[:2] != regions.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, label {label.shape}, regions {regions.shape}")
    pred_mu, label_mu = mu_tonemap(pred), mu_tonemap(label)
    squared = ((pred_mu - label_mu) ** 2).sum(axis=2)
    total = float(squared.sum())
    table = {}
    for index, name in enumerate(REGIONS):
        inside = regions == index
        count = int(inside.sum())
        table[name] = {
            "psnr_mu": psnr(pred_mu[inside][None], label_mu[inside][None]) if count else math.nan,
            "psnr_l": psnr(pred[inside][None], label[inside][None]) if count else math.nan,
            "pixel_share": count / inside.size,
            "error_share": float(squared[inside].sum()) / total if total > 0 else math.nan,
        }
    return table


def region_table(prediction: ImageLike, sample: Mapping[str, object],
                 settings: RegionSettings = RegionSettings()) -> list[dict[str, Any]]:
    """The region rows ``{"region": name, psnr_mu, psnr_l, pixel_share, error_share}`` of one
    prediction (3×H×W tensor or H×W×3 array) of a labelled sample; ``format_region_rows`` prints them."""
    regions = sample_region_map(sample, settings)
    by_region = region_metrics(prediction, torch.as_tensor(sample["label"]), regions)
    return [{REGION_KEY: name, **values} for name, values in by_region.items()]


def region_columns(prediction: ImageLike, sample: Mapping[str, object],
                   settings: RegionSettings = RegionSettings()) -> dict[str, float]:
    """One scene's region values as flat columns ``<region>_<metric>`` (for metrics.csv)."""
    return {f"{row[REGION_KEY]}_{metric}": row[metric] for row in region_table(prediction, sample, settings)
            for metric in REGION_METRICS}


def region_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Means over scenes (rows of ``region_columns``) per region, NaN left out, and
    ``num_scenes``: the scenes where the region is not empty."""
    means: dict[str, dict[str, float]] = {}
    for name in REGIONS:
        means[name] = {}
        for metric in REGION_METRICS:
            values = [float(row[f"{name}_{metric}"]) for row in rows if f"{name}_{metric}" in row]
            kept = [v for v in values if not math.isnan(v)]
            means[name][metric] = float(np.mean(kept)) if kept else math.nan
        means[name]["num_scenes"] = sum(1 for row in rows if row.get(f"{name}_pixel_share", 0.0) > 0)
    return means


def region_rows(means_by_method: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """Rows ``{"method", "region", ...}`` of several methods' ``region_means``, method by method."""
    return [{"method": method, REGION_KEY: name, **values}
            for method, means in means_by_method.items() for name, values in means.items()]


def format_region_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of region rows (of ``region_table`` or ``region_rows``)."""
    key = "method" if rows and "method" in rows[0] else REGION_KEY
    return format_table(rows, key, with_mean=False)


def format_region_means(means_by_method: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Plain-text table of ``region_means`` of one method (a row per region) or of several (a row
    per method and region)."""
    if len(means_by_method) == 1:
        (means,) = means_by_method.values()
        return format_region_rows([{REGION_KEY: name, **values} for name, values in means.items()])
    return format_region_rows(region_rows(means_by_method))


def region_summary(settings: RegionSettings, means: Mapping[str, Mapping[str, float]],
                   baselines: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> dict[str, Any]:
    """The ``region_metrics`` entry of ``summary.json``: thresholds, per-region means over scenes
    (with ``num_scenes``) and, when given, the baselines' per-region means by title."""
    summary: dict[str, Any] = {"settings": settings, "regions": list(REGIONS), "means": means}
    if baselines is not None:
        summary["baselines"] = baselines
    return summary
