"""Multi-exposure scenes built from real radiance maps, in the benchmark layout.

Each scene is a random crop (at a random scale) of one real radiance map from `datasets/radiance`,
with foreground objects cut from OTHER maps of the same split (irregular elliptical patches)
that move between exposures, and a small sub-pixel camera shake on the non-reference frames.
Exposures are 2 or 3 stops apart (drawn per scene unless given). As in the benchmarks, the
shortest exposure is set for the highlights and the reference (middle) exposure clips 5–20 % of
its pixels; crops whose clipped parts are barely brighter than the clipping level (soft, low
dynamic range highlights) are drawn again.

Units follow `datasets.synthetic`: radiance is `LDR**2.2 / t` with the shortest exposure's
time 2**stop_0 (1 for a first stop of 0), and radiance above that exposure's white point
(`Brightness.bright_high`) is clamped, so labels lie in [0, 0.95]. The label is the noise-free
radiance in the reference frame's geometry.

Training and test scenes come from disjoint source maps (`TEST_SOURCES`), objects included.
With `--colour_variation`, training scenes also get a random colour variation (`vary_colour`);
test scenes always keep the photographs' colours. `<out>/scenes.json` records each scene's exposures and sources.

Command line::

    python -m datasets.real_scenes --out data/real --train 64 --test 6 --size 256 320 --seed 0
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from utils.image_io import read_hdr

from .preprocess import GAMMA, exposure_times
from .scene import PathLike
from .synthetic import (SATURATED_RANGE, SATURATION_LEVEL, SPLIT_IDS, Brightness, SyntheticScene,
                        empty_split_folder, expose, generator_parser, saturated_fraction, write_scene)

RADIANCE_DIR = Path(__file__).resolve().parent / "radiance"
# held-out source maps: test scenes use only these, training scenes never do
TEST_SOURCES = ("courtyard", "sunrise", "Desk")
DEFAULT_SPACINGS = (2.0, 3.0)
MAX_CLAMPED = 0.02  # largest fraction of the reference view brighter than the shortest exposure's white
MIN_HEADROOM = 1.5  # median radiance of the reference's clipped pixels over the clipping level
TARGET_SATURATED = (0.07, 0.17)  # clipped fractions allowed, inside SATURATED_RANGE with room for noise
WHITE_BALANCE_RANGE = (0.6, 1.4)  # per-channel gains of a training scene's colour variation
SATURATION_RANGE = (1.0, 1.6)  # chroma scale of a training scene's colour variation


@dataclass(frozen=True)
class SceneSpread:
    """How far generated scenes vary: the ranges a scene's clipping, objects and shake are drawn from.

    The defaults are the benchmark-like scenes the demo checkpoint was trained and scored on;
    wider ranges make harder held-out sets (more clipping, larger and faster objects, more shake).
    """

    clipped: tuple[float, float] = TARGET_SATURATED  # fraction of the reference exposure clipped
    objects: tuple[int, int] = (1, 3)  # moving objects per scene (inclusive)
    object_size: tuple[float, float] = (0.14, 0.3)  # object box side over the image's short side
    speed: tuple[float, float] = (0.03, 0.08)  # object motion per exposure step over the short side
    shake: float = 0.012  # largest camera shake over the short side (at least 1 px)

    def accepted_clipping(self) -> tuple[float, float]:
        """The clipped fractions a drawn crop may have: `clipped` with room for noise."""
        if self.clipped == TARGET_SATURATED:
            return SATURATED_RANGE
        low, high = self.clipped
        return max(0.0, low - 0.02), min(1.0, high + 0.03)


@dataclass
class RealScene(SyntheticScene):
    """A generated scene plus the names of the radiance maps it was built from."""

    background: str = ""
    objects: tuple[str, ...] = ()


@dataclass(frozen=True)
class MovingPatch:
    """A foreground object: a patch of radiance with an irregular soft-edged outline."""

    radiance: np.ndarray  # h×w×3
    alpha: np.ndarray  # h×w in [0, 1]
    center: tuple[float, float]  # (y, x) in the reference view
    velocity: tuple[float, float]  # (dy, dx) per exposure step


def load_radiance_maps(radiance_dir: PathLike = RADIANCE_DIR) -> dict[str, np.ndarray]:
    """Every `<name>.hdr` in `radiance_dir`, by name."""
    maps = {path.stem: read_hdr(path) for path in sorted(Path(radiance_dir).glob("*.hdr"))}
    if not maps:
        raise FileNotFoundError(f"no .hdr radiance maps in {radiance_dir} (see datasets/fetch_radiance.py)")
    return maps


def split_sources(names: Sequence[str], split: str) -> list[str]:
    """The source maps a split may use: `TEST_SOURCES` for Test, all the others for Training."""
    chosen = [n for n in names if (n in TEST_SOURCES) == (split == "Test")]
    if len(chosen) < 2:
        raise ValueError(f"split {split} needs at least two radiance maps (background + objects), got {chosen}")
    return chosen


def random_crop(rng: np.random.Generator, image: np.ndarray, shape: tuple[int, int],
                max_zoom: float = 2.0) -> np.ndarray:
    """A `shape` crop of `image` resized by a random factor (log-uniform from just covering to `max_zoom`×that)."""
    height, width = shape
    fit = max(height / image.shape[0], width / image.shape[1])
    scale = fit * float(np.exp(rng.uniform(0.0, np.log(max_zoom)))) if fit < 1.0 else fit
    scale = min(scale, max(fit, 1.0))  # never enlarge beyond the source's resolution unless forced to
    size = (max(width, int(np.ceil(image.shape[1] * scale))), max(height, int(np.ceil(image.shape[0] * scale))))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR)
    top = int(rng.integers(0, resized.shape[0] - height + 1))
    left = int(rng.integers(0, resized.shape[1] - width + 1))
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def irregular_alpha(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A soft-edged blob filling an h×w box: an ellipse whose radius wobbles with the angle."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = (yy - (height - 1) / 2) / (height / 2), (xx - (width - 1) / 2) / (width / 2)
    angle, distance = np.arctan2(dy, dx), np.sqrt(dy**2 + dx**2)
    radius = np.full_like(angle, 0.8)
    for harmonic in (2, 3, 5):
        radius += rng.uniform(0.0, 0.08) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    edge = 1.5 / min(height, width)  # about 1.5 pixels of anti-aliasing
    return np.clip((radius - distance) / (2 * edge) + 0.5, 0.0, 1.0).astype(np.float32)


def paste(image: np.ndarray, patch: MovingPatch, center: tuple[float, float]) -> None:
    """Composite `patch` centred at sub-pixel `center` (y, x) onto an H×W×3 image, in place."""
    height, width = patch.alpha.shape
    top_f, left_f = center[0] - height / 2, center[1] - width / 2
    top, left = int(np.floor(top_f)), int(np.floor(left_f))
    shift = np.float32([[1, 0, left_f - left], [0, 1, top_f - top]])
    box = (width + 1, height + 1)
    alpha = cv2.warpAffine(patch.alpha, shift, box, flags=cv2.INTER_LINEAR)[..., None]
    colour = cv2.warpAffine(patch.radiance, shift, box, flags=cv2.INTER_LINEAR)
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(image.shape[0], top + height + 1), min(image.shape[1], left + width + 1)
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
    target = image[y0:y1, x0:x1]
    target *= 1.0 - a
    target += a * colour[y0 - top:y1 - top, x0 - left:x1 - left]


def shaken_view(canvas: np.ndarray, margin: int, size: tuple[int, int], shake: tuple[float, float]) -> np.ndarray:
    """The H×W view at offset `margin + shake` (y, x) of the canvas, bilinear for sub-pixel shakes."""
    height, width = size
    move = np.float32([[1, 0, margin + shake[1]], [0, 1, margin + shake[0]]])
    return cv2.warpAffine(canvas, move, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def _moving_patch(rng: np.random.Generator, source: np.ndarray, size: tuple[int, int], level: float,
                  spread: SceneSpread = SceneSpread()) -> MovingPatch:
    """An irregular patch of `source` whose 95th-percentile brightness is `level`, with a position and speed."""
    height, width = size
    short = min(height, width)
    box = (max(6, int(rng.uniform(*spread.object_size) * short)), max(6, int(rng.uniform(*spread.object_size) * short)))
    radiance = random_crop(rng, source, box, max_zoom=4.0)
    radiance = radiance * (level / max(float(np.percentile(radiance.max(axis=2), 95)), 1e-8))
    speed = rng.uniform(*spread.speed) * short
    direction = rng.uniform(0, 2 * np.pi)
    return MovingPatch(
        radiance=radiance.astype(np.float32),
        alpha=irregular_alpha(rng, box),
        center=(rng.uniform(0.15, 0.85) * height, rng.uniform(0.1, 0.9) * width),
        velocity=(speed * np.sin(direction), speed * np.cos(direction)),
    )


def exposure_gain(rng: np.random.Generator, reference_view: np.ndarray, clip_radiance: float, white: float,
                  target: tuple[float, float] = TARGET_SATURATED) -> float:
    """The factor that turns map radiance into scene radiance, as a photographer would bracket.

    The brightest 0.5 % of the reference view go just under `white` (the shortest exposure's
    white point), unless that clips less or more than `TARGET_SATURATED` of the reference
    exposure (radiance above `clip_radiance`): then the nearest gain inside that range is taken.
    """
    brightness = reference_view.max(axis=2)
    most, fewest = np.quantile(brightness, [1.0 - target[1], 1.0 - target[0]])
    peak = float(np.quantile(brightness, 0.995))
    highlight_gain = white * rng.uniform(0.7, 1.0) / max(peak, 1e-12)
    return float(np.clip(highlight_gain, clip_radiance / max(fewest, 1e-12), clip_radiance / max(most, 1e-12)))


def vary_colour(rng: np.random.Generator, views: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The views with one random colour variation: channels permuted, white balance changed and
    chroma scaled (around each pixel's channel mean), radiance kept non-negative.

    The training maps hold few bright, strongly coloured highlights (a sunset sky, a coloured
    lamp); varying their colours teaches the network to rebuild every channel's highlights
    rather than the colours of ten photographs.
    """
    permutation = rng.permutation(3)
    gains = rng.uniform(*WHITE_BALANCE_RANGE, size=3)
    gains /= gains.mean()
    chroma = rng.uniform(*SATURATION_RANGE)
    varied = []
    for view in views:
        coloured = view[..., permutation] * gains
        mean = coloured.mean(axis=2, keepdims=True)
        varied.append(np.maximum(mean + chroma * (coloured - mean), 0.0).astype(np.float32))
    return varied


def render_real_scene(rng: np.random.Generator, maps: dict[str, np.ndarray], background: str,
                      object_sources: Sequence[str], size: tuple[int, int], exposures: Sequence[float],
                      max_tries: int = 12, colour_variation: bool = False,
                      spread: SceneSpread = SceneSpread()) -> RealScene:
    """One scene: a crop of map `background`, patches of `object_sources` moving, camera shake, n exposures, label.

    With `colour_variation` (training scenes), the scene's colours are varied by `vary_colour`;
    `spread` sets the ranges of clipping, objects and shake.

    Crops are drawn (up to `max_tries`) until one looks like a benchmark scene: its reference
    exposure clips a fraction within `spread.accepted_clipping()`, the clipped pixels are on median at least
    `MIN_HEADROOM` times brighter than the clipping level, and no more than `MAX_CLAMPED` of the
    view exceeds the shortest exposure's white; otherwise the closest one is kept.
    """
    height, width = size
    exposures = tuple(float(e) for e in exposures)
    times = exposure_times(exposures)
    reference = len(exposures) // 2
    levels = Brightness.for_exposures(exposures)
    clip_radiance = SATURATION_LEVEL**GAMMA / float(times[reference])
    max_shake = max(1.0, spread.shake * min(height, width)) if spread.shake > 0 else 0.0
    margin = int(np.ceil(max_shake)) + 2
    low, high = spread.accepted_clipping()
    best, best_score = None, None
    for _ in range(max_tries):
        canvas = random_crop(rng, maps[background], (height + 2 * margin, width + 2 * margin))
        provisional = float(np.quantile(canvas[margin:-margin, margin:-margin].max(axis=2), 1.0 - np.mean(
            spread.clipped)))
        count = int(rng.integers(spread.objects[0], spread.objects[1] + 1))
        object_names = tuple(str(n) for n in rng.choice(list(object_sources), size=count))
        patches = [_moving_patch(rng, maps[name], size, provisional * rng.uniform(0.15, 0.8), spread)
                   for name in object_names]
        views = []
        for index in range(len(exposures)):
            step = index - reference
            shake = (0.0, 0.0) if step == 0 else tuple(rng.uniform(-max_shake, max_shake, size=2))
            view = shaken_view(canvas, margin, size, shake)
            for patch in patches:
                paste(view, patch, (patch.center[0] + step * patch.velocity[0] - shake[0],
                                    patch.center[1] + step * patch.velocity[1] - shake[1]))
            views.append(view)
        if colour_variation:
            views = vary_colour(rng, views)
        gain = exposure_gain(rng, views[reference], clip_radiance, levels.bright_high, spread.clipped)
        brightness = views[reference].max(axis=2) * gain
        clipped = brightness[brightness > clip_radiance]
        headroom = float(np.median(np.minimum(clipped, levels.bright_high))) / clip_radiance if clipped.size else 0.0
        clamped = float(np.mean(brightness > levels.bright_high))
        views = [np.clip(view * gain, 0.0, levels.bright_high).astype(np.float32) for view in views]
        ldrs = np.stack([expose(view, float(t), rng) for view, t in zip(views, times)])
        scene = RealScene(ldrs=ldrs, label=views[reference], exposures=exposures,
                          background=background, objects=object_names)
        score = (low <= saturated_fraction(ldrs[reference]) <= high, clamped <= MAX_CLAMPED,
                 min(headroom, MIN_HEADROOM))
        if best_score is None or score > best_score:
            best, best_score = scene, score
        if score == (True, True, MIN_HEADROOM):
            break
    assert best is not None
    return best


def scene_exposures(rng: np.random.Generator, exposures: Optional[Sequence[float]], spacings: Sequence[float],
                    count: int) -> tuple[float, ...]:
    """The given stops, or `count` stops from 0 with a spacing drawn from `spacings`."""
    if exposures:
        return tuple(float(e) for e in exposures)
    spacing = float(rng.choice(list(spacings)))
    return tuple(spacing * k for k in range(count))


def make_real_dataset(out_dir: PathLike, num_train: int, num_test: int, size: tuple[int, int] = (256, 320),
                      seed: int = 0, exposures: Optional[Sequence[float]] = None,
                      spacings: Sequence[float] = DEFAULT_SPACINGS, num_exposures: int = 3,
                      radiance_dir: PathLike = RADIANCE_DIR, overwrite: bool = False, progress: bool = False,
                      colour_variation: bool = False, spread: SceneSpread = SceneSpread()
                      ) -> dict[str, dict[str, dict]]:
    """Write Training and Test scenes under `out_dir` (deterministic in `seed`); returns the scenes.json record.

    Existing non-empty split folders are an error unless `overwrite` (which deletes them). With
    `colour_variation`, training scenes get `vary_colour` (test scenes never do).
    """
    out_dir = Path(out_dir)
    maps = load_radiance_maps(radiance_dir)
    record: dict[str, dict[str, dict]] = {}
    for split, count in (("Training", num_train), ("Test", num_test)):
        split_dir = empty_split_folder(out_dir, split, overwrite)
        sources = split_sources(list(maps), split)
        record[split] = {}
        for index in tqdm(range(count), desc=f"{split} scenes", disable=not progress):
            rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
            stops = scene_exposures(rng, exposures, spacings, num_exposures)
            background = sources[index % len(sources)]  # every source in turn
            others = [name for name in sources if name != background]
            scene = render_real_scene(rng, maps, background, others, size, stops,
                                      colour_variation=colour_variation and split == "Training", spread=spread)
            name = f"scene_{index + 1:04d}"
            write_scene(split_dir / name, scene)
            record[split][name] = {"exposures": list(stops), "background": scene.background,
                                   "objects": list(scene.objects)}
    (out_dir / "scenes.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = generator_parser("Generate multi-exposure scenes from real radiance maps.", 64, 6, (256, 320))
    stops = parser.add_mutually_exclusive_group()
    stops.add_argument("--exposures", type=float, nargs="+", default=None,
                       help="fixed exposure stops for every scene, shortest first (e.g. 0 2 4)")
    stops.add_argument("--spacing", type=float, nargs="+", default=list(DEFAULT_SPACINGS),
                       help="stop spacings to draw from per scene (default: 2 3)")
    parser.add_argument("--num_exposures", type=int, default=3, help="exposures per scene (with --spacing)")
    parser.add_argument("--radiance_dir", type=Path, default=RADIANCE_DIR, help="folder of .hdr radiance maps")
    parser.add_argument("--overwrite", action="store_true", help="replace existing Training/ and Test/ folders")
    parser.add_argument("--colour_variation", action="store_true",
                        help="vary each training scene's colours (channel order, white balance, chroma)")
    spread = parser.add_argument_group("scene spread (defaults: the benchmark-like scenes)")
    defaults = SceneSpread()
    spread.add_argument("--clipped", type=float, nargs=2, metavar=("LOW", "HIGH"), default=list(defaults.clipped),
                        help=f"fraction of the reference exposure clipped (default: {defaults.clipped[0]:g} {defaults.clipped[1]:g})")
    spread.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"), default=list(defaults.objects),
                        help=f"moving objects per scene, 0 0 for a static scene (default: {defaults.objects[0]} {defaults.objects[1]})")
    spread.add_argument("--object_size", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=list(defaults.object_size),
                        help=f"object side over the image's short side (default: {defaults.object_size[0]:g} "
                             f"{defaults.object_size[1]:g})")
    spread.add_argument("--speed", type=float, nargs=2, metavar=("LOW", "HIGH"), default=list(defaults.speed),
                        help=f"object motion per exposure step over the image's short side (default: "
                             f"{defaults.speed[0]:g} {defaults.speed[1]:g})")
    spread.add_argument("--shake", type=float, default=defaults.shake,
                        help=f"largest camera shake over the image's short side, 0 for a tripod (default: {defaults.shake:g})")
    args = parser.parse_args(argv)
    for name in ("clipped", "object_size", "speed"):
        low, high = getattr(args, name)
        if not 0.0 <= low <= high or (name == "clipped" and high >= 1.0):
            parser.error(f"--{name} {low} {high}: need 0 <= LOW <= HIGH" + (" < 1" if name == "clipped" else ""))
    if not 0 <= args.objects[0] <= args.objects[1]:
        parser.error(f"--objects {args.objects[0]} {args.objects[1]}: need 0 <= MIN <= MAX")
    if args.shake < 0:
        parser.error(f"--shake {args.shake}: need >= 0")
    args.spread = SceneSpread(clipped=tuple(args.clipped), objects=tuple(args.objects),
                              object_size=tuple(args.object_size), speed=tuple(args.speed), shake=args.shake)
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    make_real_dataset(args.out, args.train, args.test, size=tuple(args.size), seed=args.seed,
                      exposures=args.exposures, spacings=args.spacing, num_exposures=args.num_exposures,
                      radiance_dir=args.radiance_dir, overwrite=args.overwrite, progress=True,
                      colour_variation=args.colour_variation, spread=args.spread)
    print(f"wrote {args.train} training and {args.test} test scenes to {args.out}")


if __name__ == "__main__":
    main()
