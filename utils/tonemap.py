"""μ-law tone mapping shared by the loss, the metric-guided update and the metrics,
and 8-bit tone-mapped previews for display."""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import cv2
import numpy as np
import torch

MU = 5000.0
GAMMA = 2.2
"""Gamma of the LDR images (the benchmarks' camera curve, LDR = (radiance·t)**(1/GAMMA)) and of the previews."""

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def mu_tonemap(hdr: Array, mu: float = MU) -> Array:
    """T(h) = log(1 + μh) / log(1 + μ) for a NumPy array or a tensor (linear HDR in [0, 1])."""
    if isinstance(hdr, torch.Tensor):
        return torch.log1p(mu * hdr) / math.log1p(mu)
    return np.log1p(mu * hdr) / math.log1p(mu)


# ---------------------------------------------------------------------------
# Display previews (8-bit images for people to look at; never used by metrics)
# ---------------------------------------------------------------------------

DISPLAY_OPERATORS = ("reinhard", "mantiuk", "mu")

# Smallest value handed to the OpenCV operators: both take logarithms of the image, and
# Mantiuk's refuses a constant one, so exact zeros are lifted to a tiny positive floor.
_OPENCV_FLOOR = 1e-6


def _opencv_tonemapper(operator: str, gamma: float, params: dict[str, float]) -> cv2.Tonemap:
    """Build OpenCV's Reinhard (global adaptation) or Mantiuk operator with its parameters."""
    if operator == "reinhard":
        return cv2.createTonemapReinhard(
            gamma=gamma,
            intensity=params.get("intensity", 0.0),
            light_adapt=params.get("light_adapt", 0.0),
            color_adapt=params.get("color_adapt", 0.0),
        )
    return cv2.createTonemapMantiuk(
        gamma=gamma,
        scale=params.get("scale", 0.85),
        saturation=params.get("saturation", 1.2),
    )


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's log while its operator runs: Reinhard's implementation prints a
    warning about its own internal multi-channel expressions on every first call, which says
    nothing about the caller's image. Errors still raise."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Map a [0, 1] float image to 8 bits (NaN counts as 0, values outside are clipped)."""
    image = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def tonemap_for_display(
    hdr: np.ndarray,
    operator: str = "reinhard",
    gamma: float = GAMMA,
    **params: float,
) -> np.ndarray:
    """Tone map a linear H×W×3 RGB image to an 8-bit RGB preview.

    operator:
      - "reinhard": OpenCV's Reinhard operator, global adaptation by default
        (params: intensity, light_adapt, color_adapt);
      - "mantiuk": OpenCV's Mantiuk contrast-domain operator (params: scale, saturation);
      - "mu": the μ-law curve of the metrics on the image clipped to [0, 1], written to 8 bits
        without gamma (what PSNR-μ / SSIM-μ compare); ``gamma`` is ignored.
    The OpenCV operators adapt to the statistics of the image they get: tone map images that
    must be compared together as one image (see ``evaluation.previews.side_by_side``).
    """
    hdr = np.asarray(hdr, dtype=np.float32)
    if operator == "mu":
        return to_uint8(mu_tonemap(np.clip(hdr, 0.0, 1.0)))
    if operator not in DISPLAY_OPERATORS:
        raise ValueError(f"unknown display operator {operator!r}; expected one of {DISPLAY_OPERATORS}")
    hdr = np.maximum(np.nan_to_num(hdr, nan=0.0), _OPENCV_FLOOR)
    if float(hdr.max() - hdr.min()) <= 0.0:
        # Constant image: the operators are undefined on it; show its clipped, gamma-encoded value.
        return to_uint8(np.clip(hdr, 0.0, 1.0) ** (1.0 / gamma))
    bgr = np.ascontiguousarray(hdr[..., ::-1])
    with _quiet_opencv():
        mapped = _opencv_tonemapper(operator, gamma, params).process(bgr)
    return to_uint8(mapped[..., ::-1])
