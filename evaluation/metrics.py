"""Per-scene HDR metrics (PSNR, SSIM, PU21, ColorVideoVDP); ``evaluation.tables`` accumulates them.

All metrics compare a prediction ŷ with a label y, both H×W×3 linear RGB in the label's units
(Kalantari's labels lie in about [0, 1]). Following the evaluation protocol, the prediction is
expected to be clamped to [0, 1] by the caller already; nothing here clamps.

The PU21 and ColorVideoVDP columns need the optional ``cvvdp`` package (import ``pycvvdp``);
without it they are left out with a one-line note.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from utils.tonemap import mu_tonemap

logger = logging.getLogger(__name__)

SSIM_VARIANTS = ("released", "matlab")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

DEFAULT_PEAK_LUMINANCE = 1000.0  # cd/m² that a label value of 1.0 stands for
DEFAULT_CVVDP_DISPLAY = "standard_hdr_linear"
# Rec. 709 / sRGB primaries, D65: linear RGB → luminance (the BT.709 'RGB2Y' row in cvvdp).
REC709_LUMINANCE = np.array([0.2126729, 0.7151522, 0.0721750])

ImageLike = np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------

def as_hwc_array(image: ImageLike) -> np.ndarray:
    """Return an H×W×C float64 NumPy array.

    NumPy arrays must already be H×W×C. Tensors are taken in the network's layout,
    C×H×W or 1×C×H×W, and moved to the CPU.
    """
    if isinstance(image, torch.Tensor):
        tensor = image.detach().to("cpu", torch.float64)
        if tensor.ndim == 4:
            if tensor.shape[0] != 1:
                raise ValueError(f"expected a single image, got a batch of shape {tuple(tensor.shape)}")
            tensor = tensor[0]
        if tensor.ndim != 3:
            raise ValueError(f"expected C×H×W or 1×C×H×W, got shape {tuple(image.shape)}")
        return tensor.permute(1, 2, 0).numpy()
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"expected H×W×C, got shape {array.shape}")
    return array


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")


# ---------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------

def psnr(a: ImageLike, b: ImageLike, data_range: float = 1.0) -> float:
    """20·log10(data_range / √MSE), MSE over all pixels and channels, in float64 (inf if equal)."""
    a, b = as_hwc_array(a), as_hwc_array(b)
    _check_same_shape(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(data_range / math.sqrt(mse))


def psnr_l(pred: ImageLike, label: ImageLike) -> float:
    """PSNR on the linear values (data range 1)."""
    return psnr(pred, label)


def psnr_mu(pred: ImageLike, label: ImageLike) -> float:
    """PSNR on the μ-law tone-mapped values (data range 1)."""
    return psnr(mu_tonemap(as_hwc_array(pred)), mu_tonemap(as_hwc_array(label)))


# ---------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------

@functools.cache
def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D Gaussian taps normalised to sum 1; their outer product is the 2-D SSIM window."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(x**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _gaussian_filter_same(image: np.ndarray) -> np.ndarray:
    """Filter every channel with the SSIM window, zero padding, output of the input's size."""
    taps = gaussian_window_1d()
    filtered = cv2.sepFilter2D(image, cv2.CV_64F, taps, taps, borderType=cv2.BORDER_CONSTANT)
    return filtered.reshape(image.shape)  # cv2 drops a trailing channel axis of size 1


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel, per-channel SSIM with the 11×11 σ=1.5 Gaussian window and zero padding ("same").

    C1 = (0.01·data_range)², C2 = (0.03·data_range)²; population (weighted) variances.
    """
    a, b = as_hwc_array(a), as_hwc_array(b)
    _check_same_shape(a, b)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _gaussian_filter_same(a), _gaussian_filter_same(b)
    mu_ab = mu_a * mu_b
    mu_sq_sum = mu_a * mu_a + mu_b * mu_b
    # The filter is linear: σa² + σb² = G*(a² + b²) − (μa² + μb²) needs a single filtering.
    var_sum = _gaussian_filter_same(a * a + b * b) - mu_sq_sum
    cov = _gaussian_filter_same(a * b) - mu_ab
    return ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_sq_sum + c1) * (var_sum + c2))


def ssim(a: ImageLike, b: ImageLike, variant: str = "released", data_range: float = 1.0) -> float:
    """Mean SSIM over all pixels and channels, in float64.

    - "released" (the released test script): zero-padded "same" filtering, every pixel averaged,
      C1 = (0.01·data_range)², C2 = (0.03·data_range)².
    - "matlab" (MATLAB / BasicSR style): the images scaled to 0–255, C1 = (0.01·255)²,
      C2 = (0.03·255)², only the "valid" region (5-pixel border dropped) averaged.
    """
    if variant not in SSIM_VARIANTS:
        raise ValueError(f"unknown SSIM variant {variant!r}; expected one of {SSIM_VARIANTS}")
    if variant == "released":
        return float(ssim_map(a, b, data_range).mean())
    scale = 255.0 / data_range
    full = ssim_map(as_hwc_array(a) * scale, as_hwc_array(b) * scale, data_range=255.0)
    border = SSIM_WINDOW // 2
    valid = full[border:-border, border:-border]
    if valid.size == 0:
        raise ValueError(f"image smaller than the {SSIM_WINDOW}×{SSIM_WINDOW} SSIM window")
    return float(valid.mean())


def ssim_l(pred: ImageLike, label: ImageLike, variant: str = "released") -> float:
    """SSIM on the linear values (data range 1)."""
    return ssim(pred, label, variant)


def ssim_mu(pred: ImageLike, label: ImageLike, variant: str = "released") -> float:
    """SSIM on the μ-law tone-mapped values (data range 1)."""
    return ssim(mu_tonemap(as_hwc_array(pred)), mu_tonemap(as_hwc_array(label)), variant)


# ---------------------------------------------------------------------------
# Optional cvvdp-based metrics: PU21 and ColorVideoVDP
# ---------------------------------------------------------------------------

@functools.cache
def load_pycvvdp() -> Any | None:
    """Import the optional ``pycvvdp`` package (pip name ``cvvdp``); None with a note if absent."""
    # pycvvdp imports torch.utils.cpp_extension, which warns about a missing CUDA toolkit on
    # every CPU-only machine; nothing here compiles an extension, so that warning is muted.
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        import pycvvdp
    except ImportError as error:
        logger.warning("cvvdp is not installed (%s): PU21 and ColorVideoVDP columns are skipped", error)
        return None
    finally:
        extension_log.setLevel(level)
    return pycvvdp


@functools.cache
def _pu21_encoder() -> Any | None:
    pycvvdp = load_pycvvdp()
    return None if pycvvdp is None else pycvvdp.utils.PU()


def pu21_encode(luminance: np.ndarray) -> np.ndarray | None:
    """PU21 code values (banding + glare variant) of absolute luminance in cd/m².

    Luminance is clipped by PU21 to its domain [0.005, 10000] cd/m²; None without cvvdp.
    """
    encoder = _pu21_encoder()
    if encoder is None:
        return None
    return np.asarray(encoder.encode(np.asarray(luminance, dtype=np.float64)), dtype=np.float64)


def relative_to_luminance(image: ImageLike, peak_luminance: float = DEFAULT_PEAK_LUMINANCE) -> np.ndarray:
    """Absolute luminance (cd/m², H×W×1) of relative linear Rec. 709 RGB, where 1.0 ↦ peak_luminance."""
    rgb = as_hwc_array(image)
    return (rgb @ REC709_LUMINANCE)[..., None] * peak_luminance


def pu21_metrics(
    pred: ImageLike,
    label: ImageLike,
    peak_luminance: float = DEFAULT_PEAK_LUMINANCE,
    ssim_variant: str = "released",
) -> dict[str, float]:
    """PU21-PSNR and PU21-SSIM on luminance, or {} (with a note) when cvvdp is not installed.

    The labels are relative: a value of 1.0 is taken as ``peak_luminance`` cd/m² (e.g. an HDR
    display's peak). Like cvvdp's ``pu_psnr_y`` metric, the metrics are computed on the PU21
    encoding of luminance (Rec. 709 weights of linear RGB), not per colour channel. The data
    range of both is PU21(peak_luminance), the code value of the brightest label value, so
    PU-SSIM uses C1 = (0.01·PU21(peak))², C2 = (0.03·PU21(peak))² and the chosen SSIM variant.
    """
    pred_pu = pu21_encode(relative_to_luminance(pred, peak_luminance))
    if pred_pu is None:
        return {}
    label_pu = pu21_encode(relative_to_luminance(label, peak_luminance))
    pu_peak = float(pu21_encode(np.array(peak_luminance)))
    return {
        "pu_psnr": psnr(pred_pu, label_pu, data_range=pu_peak),
        "pu_ssim": ssim(pred_pu, label_pu, variant=ssim_variant, data_range=pu_peak),
    }


@functools.cache
def _cvvdp_metric(peak_luminance: float, display_name: str) -> Any | None:
    pycvvdp = load_pycvvdp()
    if pycvvdp is None:
        return None
    standard = pycvvdp.vvdp_display_photometry.load(display_name, [])
    photometry = pycvvdp.vvdp_display_photo_eotf(
        Y_peak=peak_luminance,
        contrast=getattr(standard, "contrast", 1e6),
        source_colorspace="BT.709-linear",
        E_ambient=getattr(standard, "E_ambient", 0.0),
        k_refl=getattr(standard, "k_refl", 0.005),
        exposure=peak_luminance,
        name=f"{display_name} at {peak_luminance:g} cd/m²",
    )
    return pycvvdp.cvvdp(
        display_name=display_name, display_photometry=photometry, quiet=True, device=torch.device("cpu")
    )


def cvvdp_jod(
    pred: ImageLike,
    label: ImageLike,
    peak_luminance: float = DEFAULT_PEAK_LUMINANCE,
    display_name: str = DEFAULT_CVVDP_DISPLAY,
) -> float | None:
    """ColorVideoVDP quality in JOD (10 = no visible difference), or None without cvvdp.

    Relative linear Rec. 709 input is shown on a linear display model whose ``exposure`` maps
    1.0 to ``peak_luminance`` cd/m² (the same mapping as the PU21 columns); its peak is
    ``peak_luminance`` and its contrast, ambient light and geometry (pixels per degree) are those
    of cvvdp's ``display_name`` model. Runs on the CPU; slow on full-size images.
    """
    metric = _cvvdp_metric(float(peak_luminance), display_name)
    if metric is None:
        return None
    test = torch.from_numpy(as_hwc_array(pred).astype(np.float32))
    reference = torch.from_numpy(as_hwc_array(label).astype(np.float32))
    with torch.no_grad():
        jod, _ = metric.predict(test, reference, dim_order="HWC")
    return float(jod)


# ---------------------------------------------------------------------------
# All metrics of one scene
# ---------------------------------------------------------------------------

def compute_metrics(
    pred: ImageLike,
    label: ImageLike,
    ssim_variant: str = "released",
    with_pu21: bool = True,
    with_cvvdp: bool = False,
    peak_luminance: float = DEFAULT_PEAK_LUMINANCE,
) -> dict[str, float]:
    """All metrics of one scene: psnr_l, psnr_mu, ssim_l, ssim_mu, and when available
    pu_psnr, pu_ssim (``with_pu21``) and cvvdp (``with_cvvdp``, slow; JOD).

    The cvvdp-based columns are silently absent (one logged note) when cvvdp is not installed.
    """
    pred, label = as_hwc_array(pred), as_hwc_array(label)
    _check_same_shape(pred, label)
    pred_mu, label_mu = mu_tonemap(pred), mu_tonemap(label)
    row = {
        "psnr_l": psnr(pred, label),
        "psnr_mu": psnr(pred_mu, label_mu),
        "ssim_l": ssim(pred, label, ssim_variant),
        "ssim_mu": ssim(pred_mu, label_mu, ssim_variant),
    }
    if with_pu21:
        row.update(pu21_metrics(pred, label, peak_luminance, ssim_variant))
    if with_cvvdp:
        jod = cvvdp_jod(pred, label, peak_luminance)
        if jod is not None:
            row["cvvdp"] = jod
    return row


@dataclass(frozen=True)
class MetricSettings:
    """Which metrics a run computes and how: the SSIM variant, the PU21 and ColorVideoVDP
    columns, and the luminance (cd/m²) that a label value of 1.0 stands for in those two."""

    ssim_variant: str = "released"
    pu21: bool = False
    cvvdp: bool = False
    peak_luminance: float = DEFAULT_PEAK_LUMINANCE

    def __post_init__(self) -> None:
        if self.ssim_variant not in SSIM_VARIANTS:
            raise ValueError(f"unknown SSIM variant {self.ssim_variant!r}; expected one of {SSIM_VARIANTS}")
        if not (math.isfinite(self.peak_luminance) and self.peak_luminance > 0):
            raise ValueError(f"the peak luminance must be a positive number of cd/m² (got {self.peak_luminance})")

    def compute(self, pred: ImageLike, label: ImageLike) -> dict[str, float]:
        """All metrics of one scene under these settings (see ``compute_metrics``)."""
        return compute_metrics(pred, label, self.ssim_variant, self.pu21, self.cvvdp, self.peak_luminance)
