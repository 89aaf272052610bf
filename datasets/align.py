"""Global registration of a hand-held bracket to its reference frame (``predict.py --align``).

Each non-reference frame gets one euclidean (or translation) transform, found by OpenCV's ECC
on exposure-normalised grayscale images: linearised (``LDR**2.2``), divided by the exposure
time, clipped to the radiance range both frames record (neither dark nor saturated in either)
and log-encoded, so the two frames look alike although their exposures differ. ECC finds a
translation coarse to fine on downscaled copies, then the rotation. Where it does not converge,
finds an implausibly large motion, or the two exposures share no range, OpenCV's
median-threshold bitmaps (MTB, exposure-invariant by design) give an integer shift. Frames are
warped with border replication. Moving objects are left to the network.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from utils.tonemap import GAMMA

from .preprocess import exposure_times

MOTION_MODELS = {"euclidean": cv2.MOTION_EUCLIDEAN, "translation": cv2.MOTION_TRANSLATION}
DARK_LEVEL, SATURATED_LEVEL = 0.03, 0.97
"""LDR values below / above which a pixel is taken as noise / clipped."""
ECC_SIZES = (256, 1024)
"""Longest side of the coarse and fine images ECC runs on (never above the image's own); the
warp is scaled back to full resolution."""
MAX_SHIFT_FRACTION = 0.1
"""An ECC result moving the frame by more than this fraction of its size is not trusted."""
_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)


def _gray(ldr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(ldr, dtype=np.float32), cv2.COLOR_RGB2GRAY)


def normalised_pair(reference: np.ndarray, frame: np.ndarray, t_reference: float, t_frame: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Two H×W×3 LDRs as comparable grayscale images: log radiance clipped to the range both record,
    scaled to [0, 1]. Raises ValueError when the exposures are too far apart to share a range."""
    lo = max(DARK_LEVEL ** GAMMA / t_reference, DARK_LEVEL ** GAMMA / t_frame)
    hi = min(SATURATED_LEVEL ** GAMMA / t_reference, SATURATED_LEVEL ** GAMMA / t_frame)
    if hi <= lo:
        raise ValueError(f"exposure times {t_reference:g} and {t_frame:g} share no unclipped range")
    out = []
    for ldr, t in ((reference, t_reference), (frame, t_frame)):
        radiance = np.clip(_gray(ldr) ** GAMMA / t, lo, hi)
        out.append(((np.log(radiance) - np.log(lo)) / np.log(hi / lo)).astype(np.float32))
    return out[0], out[1]


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def ecc_warp(reference: np.ndarray, frame: np.ndarray, motion: str = "euclidean") -> np.ndarray:
    """The 2×3 warp with ``frame(W·x) ≈ reference(x)`` by ECC; raises cv2.error when ECC does not
    converge. A translation is found coarse to fine first; ``euclidean`` then refines it on the
    finest level and is kept only where it correlates at least as well (a rotation estimated from
    the few unsaturated pixels of a long exposure can drift)."""
    longest = max(reference.shape)
    warp, scale = np.eye(2, 3, dtype=np.float32), 1.0
    for size in sorted({min(s, longest) for s in ECC_SIZES}):
        warp[:, 2] *= (size / longest) / scale
        scale = size / longest
        small_reference, small_frame = _resize(reference, scale), _resize(frame, scale)
        correlation, warp = cv2.findTransformECC(small_reference, small_frame, warp, cv2.MOTION_TRANSLATION,
                                                 _CRITERIA, None, 5)
    if motion == "euclidean":
        try:
            refined_correlation, refined = cv2.findTransformECC(small_reference, small_frame, warp.copy(),
                                                                cv2.MOTION_EUCLIDEAN, _CRITERIA, None, 5)
            if refined_correlation >= correlation:
                warp = refined
        except cv2.error:
            pass
    warp[:, 2] /= scale
    return warp


def mtb_warp(reference: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """An integer translation from OpenCV's median-threshold bitmaps, as a 2×3 inverse-map warp.
    The pyramid depth (the largest shift is 2**depth - 1) keeps its coarsest level >= 16 pixels."""
    reference_8bit, frame_8bit = (np.rint(np.clip(_gray(ldr), 0, 1) * 255).astype(np.uint8)
                                  for ldr in (reference, frame))
    depth = int(np.clip(np.log2(min(reference.shape[:2]) / 16), 1, 6))
    dx, dy = cv2.createAlignMTB(max_bits=depth).calculateShift(reference_8bit, frame_8bit)
    # calculateShift returns how far to move the frame onto the reference; a warp maps back.
    return np.array([[1, 0, -dx], [0, 1, -dy]], dtype=np.float32)


def _plausible(warp: np.ndarray, shape: tuple[int, ...]) -> bool:
    return bool(np.all(np.isfinite(warp))) and float(np.abs(warp[:, 2]).max()) <= MAX_SHIFT_FRACTION * max(shape[:2])


def estimate_warp(reference: np.ndarray, frame: np.ndarray, t_reference: float, t_frame: float,
                  motion: str = "euclidean") -> tuple[np.ndarray, str]:
    """The 2×3 warp taking ``frame`` onto ``reference`` (LDRs in [0, 1]) and the method that found
    it ("ecc" or "mtb")."""
    try:
        warp = ecc_warp(*normalised_pair(reference, frame, t_reference, t_frame), motion)
        if _plausible(warp, reference.shape):
            return warp, "ecc"
    except (cv2.error, ValueError):
        pass
    return mtb_warp(reference, frame), "mtb"


def warp_frame(frame: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """Resample ``frame`` so that it lines up with the reference (border pixels replicated)."""
    height, width = frame.shape[:2]
    return cv2.warpAffine(frame, warp, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def align_bracket(ldrs: Sequence[np.ndarray], stops: Sequence[float], reference: int, motion: str = "euclidean"
                  ) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """Warp every frame onto ``ldrs[reference]``. Returns the aligned n×H×W×3 float32 stack and,
    per frame, its 2×3 warp and the method ("reference" for the reference itself)."""
    if motion not in MOTION_MODELS:
        raise ValueError(f"unknown motion model {motion!r}; expected one of {tuple(MOTION_MODELS)}")
    times = exposure_times(stops)
    aligned, warps = [], []
    for index, ldr in enumerate(ldrs):
        ldr = np.asarray(ldr, dtype=np.float32)
        if index == reference:
            aligned.append(ldr)
            warps.append((np.eye(2, 3, dtype=np.float32), "reference"))
            continue
        warp, method = estimate_warp(ldrs[reference], ldr, float(times[reference]), float(times[index]), motion)
        aligned.append(np.clip(warp_frame(ldr, warp), 0.0, 1.0))
        warps.append((warp, method))
    return np.stack(aligned), warps
