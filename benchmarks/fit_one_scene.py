"""Can the tiny network reproduce one scene the reference exposure already gets right?

One static scene (no moving objects, no camera shake, almost nothing clipped) is cut from a
held-out radiance map; the demo checkpoint's network (``smnet_tiny``) is fitted to random crops
of it with the μ-law L1 loss, and every few steps the whole scene is scored against the label,
next to the reference exposure alone (which is the label up to noise there). A network that
stays well below the reference after many steps on one scene is bound by capacity, not by data
or schedule. ``--reference_residual`` fits the variant that corrects the reference instead.

``--clipped LO HI --spacing S`` asks the same of the highlights: a static scene whose reference
clips LO-HI of its pixels, exposures S stops apart, so the clipped pixels are held only by the
shorter exposures. The clipped region is then scored too (PSNR-l there), next to the shortest
exposure alone in that region (nothing moves, so it is the label up to its noise and 8-bit
steps); ``--embed_dim`` widens the network to see whether width or steps is the bound.

    python -m benchmarks.fit_one_scene --steps 600
    python -m benchmarks.fit_one_scene --steps 600 --reference_residual
    python -m benchmarks.fit_one_scene --steps 800 --reference_residual --clipped 0.15 0.25 --spacing 4
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from datasets.preprocess import build_network_input
from datasets.real_scenes import SceneSpread, load_radiance_maps, render_real_scene
from evaluation.baselines import reference_exposure_baseline
from evaluation.metrics import psnr_l, psnr_mu
from evaluation.regions import REGIONS, RegionSettings, region_metrics
from models.registry import smnet_tiny
from training.losses import mu_l1_loss

STATIC = SceneSpread(clipped=(0.0, 0.003), objects=(0, 0), shake=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--size", type=int, nargs=2, default=(192, 256))
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--background", default="courtyard")
    parser.add_argument("--reference_residual", action="store_true")
    parser.add_argument("--clipped", type=float, nargs=2, default=STATIC.clipped, metavar=("LO", "HI"),
                        help="fraction of the reference exposure clipped (default: almost none)")
    parser.add_argument("--spacing", type=float, default=2.0, help="stops between exposures")
    parser.add_argument("--embed_dim", type=int, default=24, help="network width (24: smnet_tiny)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    maps = load_radiance_maps()
    others = [name for name in ("courtyard", "sunrise", "Desk") if name != args.background]
    spread = SceneSpread(clipped=tuple(args.clipped), objects=(0, 0), shake=0.0)
    scene = render_real_scene(np.random.default_rng(0), maps, args.background, others, tuple(args.size),
                              (0.0, args.spacing, 2 * args.spacing), spread=spread)
    ldrs = [ldr.astype(np.float32) for ldr in scene.ldrs]
    x = torch.from_numpy(build_network_input(ldrs, scene.exposures))[None]
    label = torch.from_numpy(np.ascontiguousarray(scene.label.transpose(2, 0, 1)))[None]
    reference = reference_exposure_baseline(ldrs, scene.exposures)
    # saturated in the reference (no dilation, nothing crushed: the scene is bright); the rest static
    clipped = np.asarray(ldrs[1]).max(axis=2) >= RegionSettings().clip_high
    regions = np.where(clipped, REGIONS.index("clipped"), REGIONS.index("static"))

    def clipped_psnr_l(prediction: np.ndarray) -> float:
        return region_metrics(prediction, scene.label, regions)["clipped"]["psnr_l"]

    shortest = ldrs[0] ** 2.2 / float(2.0 ** scene.exposures[0])
    print(f"scene: {args.background}, {args.size[0]}×{args.size[1]}, stops {scene.exposures}, "
          f"reference clips {100 * clipped.mean():.2f} %; reference exposure PSNR-μ "
          f"{psnr_mu(reference, scene.label):.2f} PSNR-l {psnr_l(reference, scene.label):.2f}; "
          f"in the clipped region PSNR-l: reference {clipped_psnr_l(reference):.2f}, "
          f"shortest exposure alone {clipped_psnr_l(shortest):.2f}")

    model = smnet_tiny(reference_residual=args.reference_residual, drop_path_rate=0.0, embed_dim=args.embed_dim)
    print(f"network: width {args.embed_dim}, {sum(p.numel() for p in model.parameters()):,} parameters")
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    height, width = args.size
    start = time.perf_counter()
    print("step  PSNR-μ  PSNR-l  (whole scene)  clipped PSNR-l  seconds")
    for step in range(args.steps + 1):
        if step % args.eval_every == 0:
            model.eval()
            with torch.no_grad():
                out = model(x)[0].permute(1, 2, 0).numpy()
            model.train()
            print(f"{step:5d}  {psnr_mu(out, scene.label):6.2f}  {psnr_l(out, scene.label):6.2f}"
                  f"                 {clipped_psnr_l(out):6.2f}"
                  f"          {time.perf_counter() - start:6.0f}", flush=True)
        if step == args.steps:
            break
        tops = torch.randint(0, height - args.crop + 1, (args.batch_size,))
        lefts = torch.randint(0, width - args.crop + 1, (args.batch_size,))
        batch = torch.cat([x[..., t:t + args.crop, l:l + args.crop] for t, l in zip(tops, lefts)])
        target = torch.cat([label[..., t:t + args.crop, l:l + args.crop] for t, l in zip(tops, lefts)])
        loss = mu_l1_loss(model(batch), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()


if __name__ == "__main__":
    main()
