"""What the camera response costs and what ``predict.py --response auto`` wins back: mean PSNR-μ
against the true radiance of brackets encoded with several camera curves, merged by the network
with today's gamma-2.2 assumption, with the response estimated from the bracket (auto), and with
the true curve.

    python -m benchmarks.bench_response                      # 9 scenes of 256×320, 2 threads
    python -m benchmarks.bench_response --scenes 3 --size 128 160

Scenes come from the held-out real radiance maps (``datasets.real_scenes``, ``TEST_SOURCES`` in
turn, seed ``--seed``): moving objects, camera shake, 3 exposures 2 stops apart, the reference
clipping 5–20 %. Each scene's gamma-2.2 frames (sensor noise included) are linearised and encoded
again with every camera curve of ``CAMERA_CURVES``, as 8-bit values. Every bracket then goes the
way ``predict.py`` takes a hand-held one: registered to the middle frame (``--align``), linearised
and re-encoded, merged by ``--pretrained_model`` (the demo checkpoint).
Per curve: the three PSNR-μ means, auto's difference to the gamma-2.2 rendering merged as today,
the responses auto chose, and the largest error of auto's response over well-exposed codes.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import describe_machine
from datasets.real_scenes import TEST_SOURCES, load_radiance_maps, render_real_scene
from datasets.response import WELL_EXPOSED, Response, knots
from datasets.synthetic import saturated_fraction
from evaluation.merger import linearise_and_align
from evaluation.metrics import psnr_mu
from evaluation.predict import reconstruct_bracket
from models.checkpoint import load_model
from models.inference import TEST_PAD_MULTIPLE, InferenceSettings
from utils.distributed import resolve_device
from utils.tonemap import GAMMA

DEFAULT_CHECKPOINT = Path("pretrain_model/demo_smnet.pth")
STOPS = (0.0, 2.0, 4.0)
MAX_LOSS_TO_GAMMA = 1.5
"""Goal: with auto, every curve within this many dB of the gamma-2.2 rendering merged as today."""
MAX_LOSS_ON_GAMMA = 0.2
"""Goal: auto on a gamma-2.2 bracket loses at most this many dB to today's result."""


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """sRGB's encoding (IEC 61966-2-1)."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(np.maximum(linear, 0.0031308), 1 / 2.4)
                    - 0.055)


def s_curve(strength: float) -> Callable[[np.ndarray], np.ndarray]:
    """sRGB followed by a picture style's contrast S-curve, ``(1−k)·y + k·(3y² − 2y³)``."""
    def encode(linear: np.ndarray) -> np.ndarray:
        y = srgb_encode(linear)
        return (1.0 - strength) * y + strength * (3 * y**2 - 2 * y**3)
    return encode


def film_encode(linear: np.ndarray, white: float = 5.6) -> np.ndarray:
    """A film-like toe and shoulder (Hable's filmic curve, linear 1 at its white), then gamma 2.2."""
    def hable(v: np.ndarray) -> np.ndarray:
        a, b, c, d, e, f = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30
        return (v * (a * v + c * b) + d * e) / (v * (a * v + b) + d * f) - e / f
    return np.power(np.clip(hable(np.clip(linear, 0.0, 1.0) * white) / hable(np.float64(white)), 0.0, 1.0),
                    1 / GAMMA)


CAMERA_CURVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gamma 2.2": lambda linear: np.power(np.clip(linear, 0.0, 1.0), 1 / GAMMA),
    "sRGB": srgb_encode,
    "sRGB + mild S": s_curve(0.3),
    "sRGB + strong S": s_curve(0.6),
    "film toe/shoulder": film_encode,
}
"""Camera curves, linear light in [0, 1] → encoded value in [0, 1] (1 → 1)."""


def true_response(encode: Callable[[np.ndarray], np.ndarray]) -> Response:
    """The response (encoded → linear) of a camera curve, at the 256 knots."""
    linear = np.linspace(0.0, 1.0, 1 << 16)
    return Response(np.interp(knots(), encode(linear), linear), "true")


def encode_bracket(gamma_frames: np.ndarray, encode: Callable[[np.ndarray], np.ndarray],
                   levels: int = 255) -> np.ndarray:
    """Gamma-2.2 frames encoded with another camera curve, quantised to ``levels`` + 1 codes (float32)."""
    linear = np.power(np.clip(gamma_frames.astype(np.float64), 0.0, 1.0), GAMMA)
    return (np.rint(np.clip(encode(linear), 0.0, 1.0) * levels) / levels).astype(np.float32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=9, help="number of scenes (default: %(default)s)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrained_model", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(args.pretrained_model, device=device)
    settings = InferenceSettings(TEST_PAD_MULTIPLE)
    maps = load_radiance_maps()
    start = time.perf_counter()
    scores: dict[str, dict[str, list[float]]] = {name: {"gamma": [], "auto": [], "true": []} for name in CAMERA_CURVES}
    chosen: dict[str, Counter] = {name: Counter() for name in CAMERA_CURVES}
    curve_errors: dict[str, list[float]] = {name: [] for name in CAMERA_CURVES}
    clipped = []
    low, high = WELL_EXPOSED
    for index in range(args.scenes):
        background = TEST_SOURCES[index % len(TEST_SOURCES)]
        others = [name for name in TEST_SOURCES if name != background]
        scene = render_real_scene(np.random.default_rng([args.seed, index]), maps, background, others,
                                  tuple(args.size), STOPS)
        clipped.append(saturated_fraction(scene.ldrs[len(STOPS) // 2]))
        for name, encode in CAMERA_CURVES.items():
            frames = encode_bracket(scene.ldrs, encode)
            truth = true_response(encode)
            for mode, option in (("gamma", "gamma"), ("auto", "auto"), ("true", truth)):
                ldrs, response, _ = linearise_and_align(frames, STOPS, len(STOPS) // 2, option, False, align=True)
                hdr = reconstruct_bracket(model, ldrs, STOPS, device, settings)
                scores[name][mode].append(psnr_mu(hdr, scene.label))
                if mode == "auto":
                    chosen[name][response.response.name + ("" if not response.note else " (fallback)")] += 1
                    error = np.abs(response.response.curve - truth.curve)[low:high + 1].max()
                    curve_errors[name].append(float(error))

    print(f"machine: {describe_machine(device)}")
    print(f"model: {args.pretrained_model}")
    print(f"data: {args.scenes} scenes of {args.size[0]}×{args.size[1]} from {', '.join(TEST_SOURCES)} "
          f"(seed {args.seed}), stops {', '.join(f'{s:g}' for s in STOPS)}, 8-bit, reference clipped "
          f"{100 * np.mean(clipped):.1f} % on average; {time.perf_counter() - start:.0f} s\n")
    reference = float(np.mean(scores["gamma 2.2"]["gamma"]))
    header = (f"{'camera curve':<19}{'gamma 2.2':>10}{'auto':>8}{'true':>8}{'auto-ref':>10}{'worst':>8}"
              f"{'curve err':>11}  auto chose")
    print("PSNR-μ (dB), mean over scenes; auto-ref: auto against the gamma-2.2 rendering merged as today\n"
          "(worst: the scene where auto loses most to it); curve err: largest |used − true| of auto's\n"
          "response over codes 13–242, mean over scenes")
    print(header)
    print("-" * len(header))
    failures = []
    for name in CAMERA_CURVES:
        means = {mode: float(np.mean(values)) for mode, values in scores[name].items()}
        error = f"{np.mean(curve_errors[name]):11.3f}"
        picks = ", ".join(f"{pick} ×{count}" for pick, count in chosen[name].most_common())
        worst = min(np.subtract(scores[name]["auto"], scores["gamma 2.2"]["gamma"]))
        print(f"{name:<19}{means['gamma']:10.2f}{means['auto']:8.2f}{means['true']:8.2f}"
              f"{means['auto'] - reference:+10.2f}{worst:+8.2f}{error}  {picks}")
        if means["auto"] < reference - MAX_LOSS_TO_GAMMA:
            failures.append(f"{name}: auto {reference - means['auto']:.2f} dB below the gamma-2.2 rendering")
    gamma_loss = reference - float(np.mean(scores["gamma 2.2"]["auto"]))
    if gamma_loss > MAX_LOSS_ON_GAMMA:
        failures.append(f"gamma 2.2: auto loses {gamma_loss:.2f} dB to today's result")
    print("\ngoals (every curve within {:g} dB of the gamma-2.2 rendering, gamma 2.2 losing at most {:g} dB): {}".format(
        MAX_LOSS_TO_GAMMA, MAX_LOSS_ON_GAMMA, "met" if not failures else "NOT met: " + "; ".join(failures)))


if __name__ == "__main__":
    main()
