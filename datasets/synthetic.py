"""Generated multi-exposure scenes in the benchmark layout, for tests, demos and smoke training.

Each scene is an HDR radiance map (a sky or a window a few hundred times brighter than the
shadows, textured surfaces, coloured discs and rectangles), photographed at several exposure
times while foreground objects move and the camera shifts, so that naive merging ghosts.

Units: radiance is expressed like the network input channel `LDR**2.2 / t`, i.e. the shortest
exposure maps radiance 2**-stop_0 to white (1.0 for the usual first stop 0). The label is the
noise-free radiance in the reference (middle) exposure's geometry; with a first stop of 0 it
lies in [0, 1] with the brightest parts near 1. The reference exposure clips the sky/window:
5–20 % of its pixels are saturated.

Command line::

    python -m datasets.synthetic --out data/synthetic --train 8 --test 3 --size 256 256 --seed 0
"""
from __future__ import annotations

import argparse
import colorsys
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from utils.image_io import read_hdr, write_hdr, write_ldr

from .preprocess import GAMMA, exposure_times
from .scene import PathLike

DEFAULT_EXPOSURES = (0.0, 2.0, 4.0)
SATURATED_RANGE = (0.05, 0.20)
NOISE_STD = 0.002
SATURATION_LEVEL = 0.99
SPLIT_IDS = {"Training": 0, "Test": 1}
"""Part of every scene's seed, so that training and test scenes never share one."""


@dataclass(frozen=True)
class Brightness:
    """Radiance levels of a scene, derived from its exposure stops."""

    bright_low: float  # lowest sky/window radiance: clipped in the reference exposure
    bright_high: float  # highest radiance: just under white in the shortest exposure
    mid_high: float  # ceiling of everything else: unclipped in the reference exposure

    @classmethod
    def for_exposures(cls, exposures: Sequence[float]) -> "Brightness":
        times = exposure_times(exposures)
        t_short, t_ref = float(times[0]), float(times[len(times) // 2])
        bright_high = 0.95 / t_short
        bright_low = min(1.25 / t_ref, 0.8 * bright_high)
        return cls(bright_low=bright_low, bright_high=bright_high, mid_high=min(0.8 / t_ref, 0.6 * bright_low))


@dataclass(frozen=True)
class Sprite:
    """A moving foreground object: a textured disc or rectangle of one colour."""

    shape: str  # "disc" or "rect"
    center: tuple[float, float]  # (y, x) in the reference view
    half_size: tuple[float, float]  # (ry, rx); a disc uses ry
    velocity: tuple[float, float]  # (dy, dx) per exposure step
    colour: tuple[float, float, float]
    stripe_period: float
    stripe_angle: float


@dataclass
class SyntheticScene:
    """LDRs (n×H×W×3 in [0, 1], shortest first), the label (H×W×3) and the exposure stops."""

    ldrs: np.ndarray
    label: np.ndarray
    exposures: tuple[float, ...]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse random grid upsampled bicubically."""
    height, width = shape
    longest = max(height, width)
    coarse = rng.random((max(2, cells * height // longest), max(2, cells * width // longest))).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def stripes(yy: np.ndarray, xx: np.ndarray, period: float, angle: float, contrast: float) -> np.ndarray:
    """Sinusoidal stripes in [1 - contrast, 1] along direction `angle`."""
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
    return 1.0 - contrast * 0.5 * (1.0 + np.sin(phase))


def _tinted(intensity: np.ndarray, tint: Sequence[float]) -> np.ndarray:
    return intensity[..., None] * np.asarray(tint, dtype=np.float32)


def _bright_region(rng: np.random.Generator, intensity_shape: tuple[int, int], levels: Brightness) -> np.ndarray:
    """Sky-like radiance in [bright_low, bright_high] for every channel: gradient plus clouds."""
    height, width = intensity_shape
    gradient = np.linspace(1.0, 0.5, height, dtype=np.float32)[:, None]
    clouds = smooth_noise(rng, (height, width), cells=6)
    amount = 0.55 * gradient + 0.45 * clouds
    amount /= amount.max()
    tint = rng.uniform(0.8, 1.0, size=3)
    tint /= tint.max()
    span = levels.bright_high - levels.bright_low
    return levels.bright_low + span * _tinted(amount, tint)


def _textured_surface(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, low: float, high: float
                      ) -> np.ndarray:
    """A coloured surface between radiance `low` and `high`: noise, a gradient and stripes."""
    height, width = yy.shape
    noise = smooth_noise(rng, (height, width), cells=int(rng.integers(4, 12)))
    light = np.linspace(rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0), width, dtype=np.float32)[None, :]
    pattern = stripes(yy, xx, period=rng.uniform(8, 40), angle=rng.uniform(0, np.pi), contrast=rng.uniform(0.1, 0.4))
    amount = (0.4 + 0.6 * noise) * light * pattern
    colour = np.asarray(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.4), 1.0), dtype=np.float32)
    return low + (high - low) * _tinted(amount.astype(np.float32), colour)


def _shadow_factor(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, depth: float) -> np.ndarray:
    """Multiplier ≤ 1 darkening a soft elliptical region down to `depth` (e.g. 1/100)."""
    height, width = yy.shape
    cy, cx = rng.uniform(0.6, 0.95) * height, rng.uniform(0.05, 0.95) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    inside = np.clip((1.0 - distance) / 0.3, 0.0, 1.0)  # fully dark within 0.7 of the radii
    return (1.0 - inside * (1.0 - depth))[..., None]


def render_background(rng: np.random.Generator, canvas_shape: tuple[int, int], margin: int,
                      bright_fraction: float, levels: Brightness) -> np.ndarray:
    """Static radiance on a canvas with `margin` pixels around the view: an outdoor sky or a window.

    The bright region covers `bright_fraction` of the central (reference) view.
    """
    height, width = canvas_shape
    view_h, view_w = height - 2 * margin, width - 2 * margin
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bright = _bright_region(rng, canvas_shape, levels)
    # the sky is a few hundred times brighter than the deep shadow
    shadow_level = float(np.mean([levels.bright_low, levels.bright_high])) / rng.uniform(300, 600)
    surface = _textured_surface(rng, yy, xx, low=shadow_level * 8, high=levels.mid_high)
    surface *= _shadow_factor(rng, yy, xx, depth=2 * shadow_level / levels.mid_high)
    surface = np.clip(surface, shadow_level / 4, levels.mid_high)

    if rng.random() < 0.5:  # outdoor: sky above a wavy horizon
        columns = xx[0]
        amplitude = rng.uniform(0.2, 0.5) * bright_fraction * view_h
        period = rng.uniform(0.5, 1.5) * view_w
        wave = amplitude * np.sin(2 * np.pi * columns / period + rng.uniform(0, 2 * np.pi))
        # the mean sky height over the reference view gives the wanted fraction
        horizon = margin + bright_fraction * view_h + wave - wave[margin:margin + view_w].mean()
        is_bright = yy < horizon[None, :]
    else:  # indoor: a window with a cross-shaped frame
        aspect = rng.uniform(0.7, 1.5)
        win_h = min(np.sqrt(bright_fraction * view_h * view_w / aspect), 0.9 * view_h)
        win_w = min(bright_fraction * view_h * view_w / win_h, 0.9 * view_w)
        top = margin + rng.uniform(0.03, 0.6) * (view_h - win_h)
        left = margin + rng.uniform(0.05, 0.95) * (view_w - win_w)
        bar = max(1.0, 0.04 * min(win_h, win_w))
        in_window = (yy >= top) & (yy < top + win_h) & (xx >= left) & (xx < left + win_w)
        on_frame = (np.abs(yy - (top + win_h / 2)) < bar / 2) | (np.abs(xx - (left + win_w / 2)) < bar / 2)
        is_bright = in_window & ~on_frame
    return np.where(is_bright[..., None], bright, surface).astype(np.float32)


def _random_sprite(rng: np.random.Generator, size: tuple[int, int], hue: float, levels: Brightness) -> Sprite:
    height, width = size
    short = min(height, width)
    radius = rng.uniform(0.05, 0.11) * short
    speed = rng.uniform(0.03, 0.08) * short
    direction = rng.uniform(0, 2 * np.pi)
    value = rng.uniform(0.15, 0.85) * levels.mid_high
    colour = tuple(value * c for c in colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 0.95), 1.0))
    return Sprite(
        shape="disc" if rng.random() < 0.5 else "rect",
        center=(rng.uniform(0.15, 0.9) * height, rng.uniform(0.1, 0.9) * width),
        half_size=(radius, radius * rng.uniform(0.6, 1.6)),
        velocity=(speed * np.sin(direction), speed * np.cos(direction)),
        colour=colour,
        stripe_period=rng.uniform(4, 12),
        stripe_angle=rng.uniform(0, np.pi),
    )


def draw_sprite(image: np.ndarray, sprite: Sprite, center: tuple[float, float]) -> None:
    """Paint a sprite centred at `center` (y, x) onto an H×W×3 radiance image, anti-aliased."""
    reach = max(sprite.half_size) * 1.5 + 2
    top, bottom = max(0, int(center[0] - reach)), min(image.shape[0], int(center[0] + reach) + 1)
    left, right = max(0, int(center[1] - reach)), min(image.shape[1], int(center[1] + reach) + 1)
    if top >= bottom or left >= right:
        return
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    dy, dx = yy - center[0], xx - center[1]
    ry, rx = sprite.half_size
    if sprite.shape == "disc":
        coverage = ry - np.sqrt(dy**2 + dx**2)
    else:
        coverage = np.minimum(ry - np.abs(dy), rx - np.abs(dx))
    alpha = np.clip(coverage + 0.5, 0.0, 1.0)[..., None]
    texture = stripes(dy, dx, sprite.stripe_period, sprite.stripe_angle, contrast=0.35)[..., None]
    patch = image[top:bottom, left:right]
    patch *= 1.0 - alpha
    patch += alpha * texture * np.asarray(sprite.colour, dtype=np.float32)


def expose(radiance: np.ndarray, time: float, rng: np.random.Generator, noise_std: float = NOISE_STD) -> np.ndarray:
    """Camera response: clip((radiance·t)**(1/2.2) + noise) to [0, 1]."""
    ldr = np.power(np.maximum(radiance * time, 0.0), 1.0 / GAMMA)
    ldr = ldr + rng.normal(0.0, noise_std, size=ldr.shape)
    return np.clip(ldr, 0.0, 1.0).astype(np.float32)


def saturated_fraction(ldr: np.ndarray, level: float = SATURATION_LEVEL) -> float:
    """Fraction of pixels whose brightest channel is at or above `level`."""
    return float(np.mean(ldr.max(axis=2) >= level))


def _background_from_hdr(rng: np.random.Generator, hdr: np.ndarray, canvas_shape: tuple[int, int],
                         levels: Brightness) -> np.ndarray:
    """A user radiance map covering the canvas (resized, randomly cropped), brightest 0.1 % near white."""
    height, width = canvas_shape
    scale = max(height / hdr.shape[0], width / hdr.shape[1])
    resized_shape = (max(width, int(np.ceil(hdr.shape[1] * scale))), max(height, int(np.ceil(hdr.shape[0] * scale))))
    resized = cv2.resize(np.maximum(hdr, 0.0), resized_shape, interpolation=cv2.INTER_AREA)
    top = int(rng.integers(0, resized.shape[0] - height + 1))
    left = int(rng.integers(0, resized.shape[1] - width + 1))
    crop = resized[top:top + height, left:left + width]
    peak = max(float(np.percentile(crop.max(axis=2), 99.9)), 1e-8)
    return np.clip(crop * (levels.bright_high / peak), 0.0, levels.bright_high).astype(np.float32)


def _photograph(rng: np.random.Generator, background: np.ndarray, margin: int, size: tuple[int, int],
                exposures: Sequence[float], levels: Brightness) -> SyntheticScene:
    """Expose a static background with moving sprites and a shifting camera at every exposure."""
    height, width = size
    times = exposure_times(exposures)
    reference = len(exposures) // 2
    max_shift = max(1, round(0.015 * min(height, width)))
    camera_step = rng.integers(-max_shift, max_shift + 1, size=2)
    hue0, count = rng.random(), int(rng.integers(2, 5))
    sprites = [_random_sprite(rng, size, hue0 + k / count, levels) for k in range(count)]
    views = []
    for index in range(len(exposures)):
        step = index - reference
        cam_y, cam_x = (int(c) for c in step * camera_step)
        view = background[margin + cam_y:margin + cam_y + height, margin + cam_x:margin + cam_x + width].copy()
        for sprite in sprites:
            draw_sprite(view, sprite, (sprite.center[0] + step * sprite.velocity[0] - cam_y,
                                       sprite.center[1] + step * sprite.velocity[1] - cam_x))
        views.append(view)
    ldrs = np.stack([expose(view, float(t), rng) for view, t in zip(views, times)])
    return SyntheticScene(ldrs=ldrs, label=views[reference], exposures=tuple(exposures))


def render_scene(rng: np.random.Generator, size: tuple[int, int], exposures: Sequence[float] = DEFAULT_EXPOSURES,
                 hdr_background: Optional[np.ndarray] = None, max_tries: int = 20) -> SyntheticScene:
    """One scene: static background, moving sprites, camera shift, n exposures and the label.

    A rendered scene is drawn again (up to `max_tries`) until 5–20 % of the reference exposure
    is saturated; a user-supplied background (`hdr_background`) is taken as it is.
    """
    height, width = size
    exposures = tuple(float(e) for e in exposures)
    if any(b <= a for a, b in zip(exposures, exposures[1:])):
        raise ValueError(f"exposures must be increasing (shortest first), got {exposures}")
    levels = Brightness.for_exposures(exposures)
    reference = len(exposures) // 2
    max_shift = max(1, round(0.015 * min(height, width)))
    margin = max_shift * max(reference, len(exposures) - 1 - reference) + 1
    canvas_shape = (height + 2 * margin, width + 2 * margin)

    if hdr_background is not None:
        background = _background_from_hdr(rng, hdr_background, canvas_shape, levels)
        return _photograph(rng, background, margin, size, exposures, levels)
    low, high = SATURATED_RANGE
    for _ in range(max_tries):
        background = render_background(rng, canvas_shape, margin, rng.uniform(0.09, 0.15), levels)
        scene = _photograph(rng, background, margin, size, exposures, levels)
        if low <= saturated_fraction(scene.ldrs[reference]) <= high:
            break
    return scene


def write_scene(scene_dir: PathLike, scene: SyntheticScene) -> None:
    """Write a scene in the benchmark layout: input_<i>.tif (16-bit), exposure.txt, HDRImg.hdr."""
    scene_dir = Path(scene_dir)
    scene_dir.mkdir(parents=True, exist_ok=True)
    digits = len(str(len(scene.exposures)))
    for index, ldr in enumerate(scene.ldrs, start=1):
        write_ldr(scene_dir / f"input_{index:0{digits}d}.tif", ldr, bit_depth=16)
    (scene_dir / "exposure.txt").write_text("".join(f"{e:g}\n" for e in scene.exposures))
    write_hdr(scene_dir / "HDRImg.hdr", scene.label)


def empty_split_folder(out_dir: Path, split: str, overwrite: bool) -> Path:
    """``out_dir/split``, created empty; an existing non-empty one is an error unless
    ``overwrite`` (which deletes it)."""
    split_dir = out_dir / split
    if split_dir.exists() and any(split_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{split_dir} is not empty (pass overwrite=True / --overwrite to replace it)")
        shutil.rmtree(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    return split_dir


def make_dataset(out_dir: PathLike, num_train: int, num_test: int, size: tuple[int, int] = (256, 256),
                 seed: int = 0, exposures: Sequence[float] = DEFAULT_EXPOSURES,
                 from_hdr: Sequence[PathLike] = (), overwrite: bool = False, progress: bool = False) -> Path:
    """Write `num_train` Training and `num_test` Test scenes under `out_dir`; deterministic in `seed`.

    With `from_hdr`, the scenes' backgrounds are crops of those radiance maps, used in turn.
    Existing non-empty split folders are an error unless `overwrite` (which deletes them).
    """
    out_dir = Path(out_dir)
    backgrounds = [read_hdr(path) for path in from_hdr]
    for split, count in (("Training", num_train), ("Test", num_test)):
        split_dir = empty_split_folder(out_dir, split, overwrite)
        for index in tqdm(range(count), desc=f"{split} scenes", disable=not progress):
            rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
            background = backgrounds[index % len(backgrounds)] if backgrounds else None
            scene = render_scene(rng, size, exposures, hdr_background=background)
            write_scene(split_dir / f"scene_{index + 1:04d}", scene)
    return out_dir


def generator_parser(description: str, train: int, test: int, size: tuple[int, int]) -> argparse.ArgumentParser:
    """The options every scene generator takes: where, how many, how large, which seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, type=Path, help="dataset folder (Training/ and Test/ are created)")
    parser.add_argument("--train", type=int, default=train, help="number of training scenes")
    parser.add_argument("--test", type=int, default=test, help="number of test scenes")
    parser.add_argument("--size", type=int, nargs=2, default=size, metavar=("H", "W"), help="image size")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = generator_parser("Generate a multi-exposure HDR dataset in the benchmark layout.", 8, 3, (256, 256))
    parser.add_argument("--exposures", type=float, nargs="+", default=list(DEFAULT_EXPOSURES),
                        help="exposure stops, shortest first (e.g. 0 3 6)")
    parser.add_argument("--from_hdr", type=Path, nargs="*", default=[],
                        help="Radiance .hdr maps to use as scene backgrounds instead of rendered ones")
    parser.add_argument("--overwrite", action="store_true", help="replace existing Training/ and Test/ folders")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    out = make_dataset(args.out, args.train, args.test, size=tuple(args.size), seed=args.seed,
                       exposures=args.exposures, from_hdr=args.from_hdr, overwrite=args.overwrite, progress=True)
    print(f"wrote {args.train} training and {args.test} test scenes to {out}")


if __name__ == "__main__":
    main()
