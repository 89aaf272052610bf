"""Classical HDR baselines without learning, to put the network's scores in context.

Inputs are the LDR exposures (H×W×3 float32 RGB in [0, 1], shortest exposure first) and their
exposures in stops (t_i = 2**stop). Outputs are linear H×W×3 float32 RGB in the label's units,
those of the network's input channel LDR**2.2 / t_i, clamped to [0, 1] like the network output.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from datasets.preprocess import exposure_times
from utils.tonemap import GAMMA

LDR_LEVELS = 256


def linearize(ldr: np.ndarray, stop: float, gamma: float = GAMMA) -> np.ndarray:
    """Radiance seen by one exposure, in label units: LDR**gamma / t."""
    return np.asarray(ldr, dtype=np.float32) ** gamma / np.float32(2.0**stop)


def reference_exposure_baseline(ldrs: Sequence[np.ndarray], stops: Sequence[float]) -> np.ndarray:
    """The reference (middle, index n//2) exposure alone, linearised and clamped to [0, 1].

    No ghosting by construction, but no information where the reference is clipped or noisy.
    """
    ref = len(ldrs) // 2
    return np.clip(linearize(ldrs[ref], stops[ref]), 0.0, 1.0)


def gamma_camera_response(gamma: float = GAMMA) -> np.ndarray:
    """Camera response for ``cv2.MergeDebevec``: 256×1×3 float32, response[z] = (z/255)**gamma.

    The response maps an 8-bit pixel value to exposure (radiance × time) per channel. OpenCV
    merges log(response), so level 0 takes the value of level 1 (as OpenCV's own linear
    response does) to keep the logarithm finite.
    """
    levels = np.arange(LDR_LEVELS, dtype=np.float64)
    levels[0] = 1.0
    response = (levels / (LDR_LEVELS - 1)) ** gamma
    return np.repeat(response[:, None, None], 3, axis=2).astype(np.float32)


def _to_bgr8(ldr: np.ndarray) -> np.ndarray:
    rgb8 = np.round(np.clip(ldr, 0.0, 1.0) * (LDR_LEVELS - 1)).astype(np.uint8)
    return np.ascontiguousarray(rgb8[..., ::-1])


def debevec_baseline(
    ldrs: Sequence[np.ndarray], stops: Sequence[float], gamma: float = GAMMA
) -> np.ndarray:
    """OpenCV's Debevec merge of all exposures (no alignment, no deghosting), clamped to [0, 1].

    The LDRs go to OpenCV as 8-bit BGR with times 2**stops and the gamma camera response of
    ``gamma_camera_response``; the merge is a triangle-weighted mean of log(response(z) / t_i),
    so it comes out directly in label units (LDR**gamma / t). Moving content ghosts.
    """
    merge = cv2.createMergeDebevec()
    hdr_bgr = merge.process(
        [_to_bgr8(ldr) for ldr in ldrs], exposure_times(stops), gamma_camera_response(gamma)
    )
    return np.clip(hdr_bgr[..., ::-1], 0.0, 1.0).astype(np.float32)
