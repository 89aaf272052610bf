"""Camera response curves: what maps a frame's encoded values to relative linear light.

The network expects frames encoded with a plain gamma of 2.2, as the benchmark scenes are; camera
JPEGs use sRGB's curve, usually with a picture style's S-curve on top. ``predict.py`` therefore
linearises each frame with its camera's response and re-encodes it as ``linear**(1/2.2)``.

A response is a curve of 256 knots (encoded value ``i/255``; one curve, or one per channel) giving
the relative linear value, 1 at white; 16-bit frames are linearised by interpolating it. It is
``gamma`` (``z**2.2``), ``srgb``, read from a file (``load_response``, written by
``save_response``, e.g. from a calibration bracket of a static scene) or estimated from the
bracket itself (``estimate_response``), which the overlapping exposures constrain:

* every pair of frames gives pairs of 8-bit codes ``(a, b)`` of one pixel and channel with
  ``f(b) = R f(a)`` for their exposure ratio ``R``; they are gathered as joint histograms, away
  from clipping, black, edges and the image border (frames larger than 2 MP are subsampled);
* ``g = ln f`` (one curve for the three channels, as cameras apply one tone curve after white
  balance) is fitted by weighted least squares on ``g(b) − g(a) = ln R`` with ``g(1) = 0``:
  weights from each code's noise, Cauchy-robust so that moving objects count little, iterated,
  with Debevec's smoothness prior (lambda) on the third differences of ``g`` minus a base curve.
  Two or three frames constrain ``g`` only weakly (any change that repeats every exposure step
  fits them as well), so the prior is strong; and the base decides the deep shadows, where the
  data are noise: gamma 2.2 and sRGB (linear toe) both serve as base, and the fit that explains
  the data better is kept;
* a pair of frames that still disagrees with the fit (a frame the alignment missed) is left out
  and the curve fitted again on the others;
* the fit is checked (``check_estimate``): it must rest on enough well-exposed samples spread
  over the codes, increase, and make the linearised frames agree (median difference at most
  ``MAX_DISAGREEMENT`` stops); otherwise sRGB is used. When gamma 2.2 or sRGB makes the frames
  agree as well as the fit (within ``STANDARD_MARGIN``), that standard curve is used.

The estimate needs registered frames: misregistration biases it (``predict.py`` estimates again
after aligning). OpenCV's ``CalibrateDebevec`` solves Debevec's equations on points that all
frames share (a pixel counts only where no frame clips it), with no robust weights, and its prior
bends ``g`` towards a straight line; on 2–3 frames 2 stops apart it missed the benchmark's curves
by 0.1–0.3 (normalised), hence the fit here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.atomic_io import atomic_path
from utils.cli import UsageError
from utils.tonemap import GAMMA

PathLike = str | Path

LEVELS = 256
"""Knots of a response curve: encoded values i / 255."""
RESPONSE_KEYWORDS = ("auto", "gamma", "srgb")
"""``--response`` choices that are not files."""

LOW_CODE, HIGH_CODE = 1, 250
"""8-bit codes used for the fit: 0 is clipped black, codes above HIGH_CODE are close to clipping."""
WELL_EXPOSED = (13, 242)
"""Codes (5 % to 95 %) on which coverage and agreement are judged: above the noise, below clipping."""
CLIP_CODE = 254
"""A pixel with a channel at or above this code is clipped and not used in that frame."""
EDGE_RANGE = 48
"""Largest spread of codes in a 5×5 neighbourhood of a usable pixel: edges move with any residual
misregistration."""
BORDER_FRACTION = 0.02
"""Share of each side left out (aligned frames replicate their borders)."""
MAX_CALIBRATION_PIXELS = 2_000_000
"""Larger frames are subsampled (every k-th row and column) to about this many pixels."""
NOISE_CODES = 0.6
"""Standard deviation of a code, in codes (quantisation and sensor noise)."""
SMOOTHNESS = 1e6
"""Debevec's lambda, relative to the mean data weight per knot: strong, for 2–3 frames."""
SMOOTHNESS_ORDER = 3
"""The prior penalises third differences: curvature (an S-curve's) is free, wiggles are not."""
ROBUST_SCALE = 3.0
"""Residuals (in noise standard deviations) at which the Cauchy weight halves; also the cap of
each residual in ``fit_cost``."""
ITERATIONS = 5

MIN_SAMPLES = 2000
"""Fewest usable code pairs (pixels × channels × frame pairs) for an estimate."""
MIN_COVERAGE = 0.6
"""Share of the well-exposed codes that must hold samples."""
MAX_DISAGREEMENT = 0.35
"""Largest ``pair_disagreement`` (median difference of two linearised frames, in stops) of a trusted
fit: the true curve gives 0.05–0.2 (noise, moving objects, residual shake), a frame shifted by 40
pixels 0.5–1."""
STANDARD_MARGIN = 1.1
"""gamma 2.2 or sRGB replaces the fit when the frames agree within this factor as well with it."""


class ResponseError(UsageError):
    """A response file that cannot be used (exit 2 with one line, as every unusable input)."""


def knots() -> np.ndarray:
    """The encoded values of the curve's knots, i / 255 (float64)."""
    return np.arange(LEVELS, dtype=np.float64) / (LEVELS - 1)


def srgb_curve(z: np.ndarray) -> np.ndarray:
    """sRGB's decoding (IEC 61966-2-1): linear below 0.04045, a 2.4 power with offset above."""
    z = np.asarray(z, dtype=np.float64)
    return np.where(z <= 0.04045, z / 12.92, ((np.maximum(z, 0.04045) + 0.055) / 1.055) ** 2.4)


GAMMA_NAME, SRGB_NAME, ESTIMATED_NAME = "gamma 2.2", "sRGB", "estimated"


@dataclass(frozen=True)
class Response:
    """A camera response: ``curve`` (256 or 256×3, non-decreasing, 1 at white) maps the encoded
    value ``i / 255`` to relative linear light; ``name`` says what it is, ``path`` the file it
    was read from."""

    curve: np.ndarray
    name: str
    path: Path | None = None

    @property
    def is_gamma(self) -> bool:
        """The network's own encoding (a curve equal to ``z**2.2``): frames pass unchanged."""
        return self.name == GAMMA_NAME or np.array_equal(self.curve, knots() ** GAMMA)

    def linearise(self, ldrs: np.ndarray) -> np.ndarray:
        """Linear values of frames (…×3 float in [0, 1]), interpolated between the knots."""
        return _apply(self.curve, ldrs)

    def to_gamma(self, ldrs: np.ndarray) -> np.ndarray:
        """The frames as the network expects them, ``linear**(1/2.2)`` (float32; unchanged for
        gamma). The re-encoded curve is what is interpolated: exact for 8-bit frames, and closer to
        a straight line between the knots than the linear one for 16-bit frames."""
        if self.is_gamma:
            return np.asarray(ldrs, dtype=np.float32)
        return _apply(np.power(np.asarray(self.curve, dtype=np.float64), 1.0 / GAMMA), ldrs)


def _apply(curve: np.ndarray, ldrs: np.ndarray) -> np.ndarray:
    """A curve of 256 knots (or 256×3, one per channel) at every value of …×3 frames in [0, 1],
    interpolated linearly between the knots; float32."""
    ldrs = np.clip(np.asarray(ldrs, dtype=np.float32), 0.0, 1.0)
    columns = np.asarray(curve, dtype=np.float64).reshape(LEVELS, -1)
    out = np.empty(ldrs.shape, dtype=np.float32)
    for channel in range(ldrs.shape[-1]):
        out[..., channel] = np.interp(ldrs[..., channel], knots(), columns[:, channel % columns.shape[1]])
    return out


def gamma_response() -> Response:
    """The benchmarks' encoding, ``z**2.2``."""
    return Response(knots() ** GAMMA, GAMMA_NAME)


def srgb_response() -> Response:
    return Response(srgb_curve(knots()), SRGB_NAME)


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

def check_curve(curve: np.ndarray, where: str) -> np.ndarray:
    """A curve of 256 or 256×3 finite values, non-negative and non-decreasing, above black at
    white; returned scaled to 1 at white. Raises ResponseError naming ``where``."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim == 2 and curve.shape[1] == 1:
        curve = curve[:, 0]
    if curve.shape not in ((LEVELS,), (LEVELS, 3)):
        raise ResponseError(f"{where}: expected {LEVELS} values or {LEVELS} rows of 3 (R, G, B), "
                            f"got an array of shape {curve.shape}")
    if not np.all(np.isfinite(curve)):
        raise ResponseError(f"{where}: the curve holds values that are not finite numbers")
    columns = curve.reshape(LEVELS, -1)
    if np.any(columns < 0) or np.any(np.diff(columns, axis=0) < 0) or np.any(columns[-1] <= columns[0]):
        raise ResponseError(f"{where}: a response must be non-negative and increase from the first "
                            f"value (black) to the last (white)")
    return (columns / columns[-1]).reshape(curve.shape)


def load_response(path: PathLike) -> Response:
    """A response file: ``.npy``, or text (CSV or whitespace) of 256 rows of one value or three
    (R, G, B), ``#`` starting a comment; scaled to 1 at white. Raises ResponseError naming it."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            curve = np.load(path, allow_pickle=False)
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [line.split("#", 1)[0].replace(",", " ").split() for line in lines]
            widths = {len(row) for row in rows if row}
            if len(widths) > 1:
                raise ValueError(f"rows of {sorted(widths)} values")
            curve = np.array([[float(v) for v in row] for row in rows if row], dtype=np.float64)
    except (OSError, UnicodeDecodeError) as err:
        raise ResponseError(f"{path}: cannot read the response file ({getattr(err, 'strerror', None) or err})"
                            ) from None
    except ValueError as err:
        raise ResponseError(f"{path}: not a response curve ({err})") from None
    return Response(check_curve(curve, str(path)), f"file {path.name}", path)


def save_response(path: PathLike, response: Response) -> None:
    """Write ``response`` for ``load_response``: text (256 rows of one value or R, G, B, after a
    comment) or, for a ``.npy`` name, a NumPy array."""
    curve = np.asarray(response.curve, dtype=np.float64)
    header = (f"camera response ({response.name}): row i is the relative linear value of the "
              f"encoded value i/{LEVELS - 1}, 1 at white")
    with atomic_path(path) as temporary, temporary.open("wb") as file:
        if temporary.suffix.lower() == ".npy":
            np.save(file, curve)
        else:
            np.savetxt(file, curve.reshape(LEVELS, -1), fmt="%.17g", delimiter=",", header=header)


# ---------------------------------------------------------------------------
# Estimation
# ---------------------------------------------------------------------------

Cells = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Non-empty cells of the joint histograms: codes a and b, ln R of their frames, pixel count."""


def to_codes(ldrs: np.ndarray) -> np.ndarray:
    """Frames in [0, 1] (from 8- or 16-bit files) as 8-bit codes, subsampled when large."""
    ldrs = np.asarray(ldrs)
    step = max(1, int(np.ceil(np.sqrt(ldrs.shape[1] * ldrs.shape[2] / MAX_CALIBRATION_PIXELS))))
    frames = np.clip(ldrs[:, ::step, ::step].astype(np.float32), 0.0, 1.0)
    return np.rint(frames * (LEVELS - 1)).astype(np.uint8)


def usable_pixels(codes: np.ndarray) -> np.ndarray:
    """H×W mask of a frame's pixels fit for calibration: away from clipping, edges and the border."""
    height, width = codes.shape[:2]
    kernel = np.ones((5, 5), np.uint8)
    spread = (cv2.dilate(codes, kernel).astype(np.int16) - cv2.erode(codes, kernel)).max(axis=2)
    mask = (codes.max(axis=2) < CLIP_CODE) & (spread <= EDGE_RANGE)
    border_y, border_x = int(np.ceil(BORDER_FRACTION * height)), int(np.ceil(BORDER_FRACTION * width))
    mask[:border_y], mask[height - border_y:] = False, False
    mask[:, :border_x], mask[:, width - border_x:] = False, False
    return mask


@dataclass(frozen=True, eq=False)
class FramePair:
    """Two frames of a bracket (``shorter`` exposed less), ln of their exposure ratio, and the
    joint histogram of the codes one pixel's channel has in them, as its non-empty cells."""

    shorter: int
    longer: int
    log_ratio: float
    a: np.ndarray  # code in the shorter frame
    b: np.ndarray  # code in the longer frame
    count: np.ndarray

    @property
    def samples(self) -> int:
        return int(self.count.sum())


def _code_pairs(codes: np.ndarray, masks: list[np.ndarray], i: int, j: int, low: int, high: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Codes of frames i and j at the pixels (and channels) usable in both, within [low, high]."""
    both = masks[i] & masks[j]
    a, b = codes[i][both].reshape(-1), codes[j][both].reshape(-1)
    keep = (a >= low) & (a <= high) & (b >= low) & (b <= high)
    return a[keep], b[keep]


def frame_pairs(codes: np.ndarray, masks: list[np.ndarray], stops: np.ndarray) -> list[FramePair]:
    """Every pair of frames with the joint histogram of their usable codes."""
    pairs = []
    for i in range(len(codes)):
        for j in range(i + 1, len(codes)):
            a, b = _code_pairs(codes, masks, i, j, LOW_CODE, HIGH_CODE)
            histogram = np.bincount(a.astype(np.int64) * LEVELS + b, minlength=LEVELS * LEVELS)
            index = np.nonzero(histogram)[0]
            pairs.append(FramePair(i, j, float((stops[j] - stops[i]) * np.log(2.0)), index // LEVELS,
                                   index % LEVELS, histogram[index].astype(np.float64)))
    return pairs


def cells_of(pairs: Sequence[FramePair]) -> Cells:
    """The cells of several frame pairs together."""
    if not pairs:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0), np.zeros(0)
    return (np.concatenate([p.a for p in pairs]), np.concatenate([p.b for p in pairs]),
            np.concatenate([np.full(p.a.shape, p.log_ratio) for p in pairs]),
            np.concatenate([p.count for p in pairs]))


def _log(curve: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(curve, 1e-12))


def _noise_variance(g: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Variance of ``g(b) − g(a)`` from the codes' noise: σ² (g'(a)² + g'(b)²)."""
    slope = np.maximum(np.gradient(g), 1e-3)
    return NOISE_CODES**2 * (slope[a] ** 2 + slope[b] ** 2)


def fit_cost(g: np.ndarray, cells: Cells) -> float:
    """The fit's robust objective: the count-weighted mean squared residual of
    ``g(b) − g(a) = ln R`` in noise variances, each capped at ROBUST_SCALE² (moving objects)."""
    a, b, log_ratio, count = cells
    scaled = (g[b] - g[a] - log_ratio) ** 2 / _noise_variance(g, a, b)
    return float(np.sum(count * np.minimum(scaled, ROBUST_SCALE**2)) / max(float(np.sum(count)), 1.0))


def fit_log_response(cells: Cells, base: np.ndarray, smoothness: float = SMOOTHNESS,
                     order: int = SMOOTHNESS_ORDER, iterations: int = ITERATIONS) -> np.ndarray:
    """``g = ln f`` at the 256 knots, ``g(255) = 0``, fitted to the cells with the smoothness prior
    on the ``order``-th differences of ``g − base`` (see the module's docstring)."""
    a, b, log_ratio, count = cells
    difference = np.diff(np.eye(LEVELS), n=order, axis=0)
    smooth_normal, smooth_rhs = difference.T @ difference, difference.T @ (difference @ base)
    g = base - base[-1]
    free = slice(0, LEVELS - 1)
    for _ in range(iterations):
        variance = _noise_variance(g, a, b)
        residual = g[b] - g[a] - log_ratio
        weight = count / variance / (1.0 + residual**2 / (ROBUST_SCALE**2 * variance))
        normal = np.zeros((LEVELS, LEVELS))
        np.add.at(normal, (a, a), weight)
        np.add.at(normal, (b, b), weight)
        np.add.at(normal, (a, b), -weight)
        np.add.at(normal, (b, a), -weight)
        rhs = np.zeros(LEVELS)
        np.add.at(rhs, a, -weight * log_ratio)
        np.add.at(rhs, b, weight * log_ratio)
        strength = smoothness * float(weight.sum()) / LEVELS
        normal += strength * smooth_normal
        rhs += strength * smooth_rhs
        g = np.append(np.linalg.solve(normal[free, free], rhs[free]), 0.0)
    return g


def fit_response(cells: Cells) -> np.ndarray:
    """The fitted curve f (256, f(0) = 0, f(1) = 1): of the fits on a gamma-2.2 and an sRGB base
    (they differ in the deep shadows), the one that explains the cells better."""
    z = np.maximum(knots(), 0.5 / (LEVELS - 1))
    fits = [fit_log_response(cells, base) for base in (GAMMA * np.log(z), _log(srgb_curve(z)))]
    curve = np.exp(min(fits, key=lambda g: fit_cost(g, cells)))
    curve[0] = 0.0
    return curve


def pair_disagreement(curve: np.ndarray, codes: np.ndarray, masks: list[np.ndarray], pair: FramePair,
                      stops: np.ndarray) -> float:
    """How far apart a pair of frames is once linearised with ``curve`` (256) and divided by the
    exposures: the median over usable, well-exposed pixels and channels of |log2 of the ratio|,
    in stops; inf when the frames share no such pixel."""
    a, b = _code_pairs(codes, masks, pair.shorter, pair.longer, *WELL_EXPOSED)
    if a.size == 0:
        return float("inf")
    log_curve = _log(curve)
    ratio = (log_curve[b] - log_curve[a]) / np.log(2.0) - (stops[pair.longer] - stops[pair.shorter])
    return float(np.median(np.abs(ratio)))


def _coverage(cells: Cells) -> float:
    covered = np.zeros(LEVELS, bool)
    covered[cells[0]] = covered[cells[1]] = True
    return float(covered[WELL_EXPOSED[0]:WELL_EXPOSED[1] + 1].mean())


def check_estimate(curve: np.ndarray | None, samples: int, coverage: float, disagreement: float) -> str:
    """Why a fitted curve cannot be trusted, or "" when it can: too few well-exposed samples,
    not increasing, or frames that still disagree once linearised with it."""
    if curve is None or samples < MIN_SAMPLES or coverage < MIN_COVERAGE:
        return (f"too few well-exposed samples ({samples} code pairs covering {coverage:.0%} of the codes; "
                f"needs {MIN_SAMPLES} and {MIN_COVERAGE:.0%})")
    if np.any(np.diff(curve[LOW_CODE:]) <= 0):
        return "the estimated curve does not increase"
    if not disagreement <= MAX_DISAGREEMENT:
        return (f"the frames disagree by {disagreement:.2f} stops once linearised "
                f"(at most {MAX_DISAGREEMENT:g})")
    return ""


@dataclass(frozen=True)
class ResponseEstimate:
    """What ``estimate_response`` found: the response to use; the fitted curve (None without
    enough samples); ``note``: why sRGB replaced an untrusted fit ("" when it was trusted); the
    samples used; how far apart the frames are with the response used (stops, worst pair used);
    and the frame pairs left out because they disagree with the others (misregistered frames)."""

    response: Response
    fitted: np.ndarray | None
    note: str
    samples: int
    disagreement: float
    left_out: tuple[tuple[int, int], ...] = ()

    @property
    def reliable(self) -> bool:
        return not self.note


def estimate_response(ldrs: np.ndarray, stops: np.ndarray) -> ResponseEstimate:
    """The camera response of a bracket (n×H×W×3 in [0, 1], shortest exposure first, ``stops``
    increasing), estimated from the frames' overlap (see the module's docstring).

    A pair of frames that still disagrees once linearised with the fit (a frame the alignment
    missed) is left out and the curve fitted again on the pairs that agree."""
    stops = np.asarray(stops, dtype=np.float64)
    codes = to_codes(ldrs)
    masks = [usable_pixels(frame) for frame in codes]
    pairs = frame_pairs(codes, masks, stops)

    def worst(curve: np.ndarray, used: Sequence[FramePair]) -> float:
        return max((pair_disagreement(curve, codes, masks, pair, stops) for pair in used), default=float("inf"))

    used, fitted = list(pairs), None
    if cells_of(used)[3].sum() >= MIN_SAMPLES:
        fitted = fit_response(cells_of(used))
        agreeing = [p for p in used if pair_disagreement(fitted, codes, masks, p, stops) <= MAX_DISAGREEMENT]
        if agreeing and len(agreeing) < len(used) and cells_of(agreeing)[3].sum() >= MIN_SAMPLES:
            used, fitted = agreeing, fit_response(cells_of(agreeing))
    cells = cells_of(used)
    samples, disagreement = int(cells[3].sum()), worst(fitted, used) if fitted is not None else float("inf")
    left_out = tuple((p.shorter, p.longer) for p in pairs if p not in used)
    note = check_estimate(fitted, samples, _coverage(cells), disagreement)
    if note:
        fallback = srgb_response()
        return ResponseEstimate(fallback, fitted, note, samples, worst(fallback.curve, pairs), left_out)
    for standard in (gamma_response(), srgb_response()):
        standard_disagreement = worst(standard.curve, used)
        if standard_disagreement <= STANDARD_MARGIN * disagreement:
            return ResponseEstimate(standard, fitted, "", samples, standard_disagreement, left_out)
    return ResponseEstimate(Response(fitted, ESTIMATED_NAME), fitted, "", samples, disagreement, left_out)


# ---------------------------------------------------------------------------
# The --response option
# ---------------------------------------------------------------------------

def response_option(value: str | None) -> str | Response | None:
    """``--response``: None (the default), a keyword of RESPONSE_KEYWORDS, or the response read
    from the FILE it names (ResponseError, naming the file, when it cannot be used)."""
    if value is None or value.lower() in RESPONSE_KEYWORDS:
        return None if value is None else value.lower()
    return load_response(value)


@dataclass(frozen=True)
class BracketResponse:
    """The response chosen for a bracket: the response, how the per-bracket line names it, a
    one-line note ("" when there is none), and for one estimated from the frames, how far apart
    they are once linearised with it (stops; ``ResponseEstimate.disagreement``)."""

    response: Response
    label: str
    note: str = ""
    estimated: bool = False
    disagreement: float = float("inf")

    def better_than(self, other: BracketResponse) -> bool:
        """Of two estimates (on differently registered frames): trusted before untrusted, then the
        one whose frames agree better."""
        return (bool(self.note), self.disagreement) < (bool(other.note), other.disagreement)


def bracket_response(option: str | Response | None, ldrs: np.ndarray, stops: Sequence[float],
                     benchmark_folder: bool = False) -> BracketResponse:
    """The response a bracket's frames are linearised with, as ``--response`` asks.

    The default (None) is ``auto``, except for benchmark folders (with an exposure file), whose
    frames are gamma-2.2 encoded and pass unchanged, as in ``test.py``.
    """
    if isinstance(option, Response):
        return BracketResponse(option, option.name)
    if option == "gamma" or (option is None and benchmark_folder):
        return BracketResponse(gamma_response(), GAMMA_NAME + (" (benchmark folder)" if option is None else ""))
    if option == "srgb":
        return BracketResponse(srgb_response(), SRGB_NAME)
    estimate = estimate_response(ldrs, np.asarray(stops, dtype=np.float64))
    if not estimate.reliable:
        return BracketResponse(estimate.response, f"{SRGB_NAME} (auto, estimate unreliable)",
                               f"the camera response estimated from the bracket is unreliable ({estimate.note}); "
                               f"using sRGB", True, estimate.disagreement)
    left_out = "".join(f", frames {i + 1} and {j + 1} disagree" for i, j in estimate.left_out)
    return BracketResponse(estimate.response, f"{estimate.response.name} (auto, median frame mismatch "
                                              f"{estimate.disagreement:.2f} stops{left_out})", "", True,
                           estimate.disagreement)
