"""One command to run first on a machine with a GPU: does the project work there, and how fast.

    python -m benchmarks.gpu_check                        # CUDA, full sizes (a few minutes on one H100/H200)
    python -m benchmarks.gpu_check --device cpu --quick   # the same code path on small sizes (the test suite runs it)

It writes ``<out>/gpu_report.json`` and ``<out>/gpu_check.log`` (what it printed). Each part runs
on its own: a failing part is recorded with its error and the others still run; the exit code
is 1 when any check failed. Nothing is downloaded; the data are generated scenes.

Parts:
1. environment: torch, CUDA, the card and its driver;
2. checks: the released-format reference fixtures reproduced on the device (float32), the same
   output in bf16 within tolerance, a masked training step with finite loss and weights;
3. forward of the default network on a 1000×1500 bracket of 3 exposures in float32 and bf16: median
   time, peak device memory, and the time ratio against the released code's way (same weights);
4. training: the real loader (generated scenes, npy cache, ``--num_workers``) feeding masked
   training steps at batch 8, 128² crops: samples per second and the share of the time the
   step waited for data;
5. compile: ``torch.compile`` of the network against eager (compile time, speed, difference);
6. tiled inference against one pass (time, largest difference, PSNR-μ change).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.common import MatmulProbe, median_time, paired_ratio, time_alternately
from benchmarks.released_forward import released_forward
from datasets import HDRTrainDataset
from datasets.synthetic import make_dataset
from evaluation.metrics import psnr_mu
from models.checkpoint import load_model
from models.inference import InferenceSettings, autocast_context, predict, reconstruct, resolve_amp
from models.registry import ARCHITECTURES
from models.smnet import SMNet
from segmask.segment import segment_split, superpixel_masks
from training.curriculum import SegmentTables
from training.losses import HDRLoss
from training.trainer import training_step, weights_are_finite
from utils.distributed import resolve_device, synchronize

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


@dataclass(frozen=True)
class Sizes:
    """What each part runs on: the full sizes, or the ``--quick`` ones."""

    forward: tuple[int, int]
    network: dict[str, Any]
    scenes: int
    scene_size: tuple[int, int]
    batch: int
    crop: int
    steps: int
    compile_size: int
    tile: int
    tile_overlap: int
    repeats: int


FULL = Sizes(forward=(1000, 1500), network={}, scenes=8, scene_size=(512, 768), batch=8, crop=128, steps=30,
             compile_size=256, tile=512, tile_overlap=64, repeats=5)
QUICK = Sizes(forward=(160, 200), network=ARCHITECTURES["smnet_tiny"], scenes=3,
              scene_size=(96, 128), batch=4, crop=64, steps=4, compile_size=64, tile=128, tile_overlap=32, repeats=2)


class Report:
    """The parts' results, printed as they come and kept for the JSON file."""

    def __init__(self, log: io.TextIOBase) -> None:
        self.log = log
        self.parts: dict[str, dict[str, Any]] = {}

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run(self, name: str, part: Callable[[], dict[str, Any]]) -> None:
        self.say(f"== {name}")
        start = time.perf_counter()
        try:
            result = {"ok": True, **part()}
        except Exception as err:  # a broken part is a finding, not the end of the check
            result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            self.say(f"   FAILED: {result['error']}")
        result["seconds"] = round(time.perf_counter() - start, 2)
        for key, value in result.items():
            if key not in ("ok", "traceback", "seconds"):
                self.say(f"   {key}: {value}")
        self.parts[name] = result

    @property
    def ok(self) -> bool:
        return all(part["ok"] and part.get("passed", True) for part in self.parts.values())


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak device memory since the last reset (GiB), None on the CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- the parts --------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict[str, Any]:
    found: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                             "device": str(device), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found.update(card=properties.name, capability=f"{properties.major}.{properties.minor}",
                     memory_gib=round(properties.total_memory / 2**30, 1))
        if shutil.which("nvidia-smi"):
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, check=False)
            found["driver"] = query.stdout.strip().splitlines()[0] if query.stdout.strip() else None
    return found


def checks(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """Correctness on the device: the reference fixtures, bf16 against float32, a training step."""
    found: dict[str, Any] = {}
    worst = 0.0
    for io_path in sorted(FIXTURES.glob("*.io.pt")):
        io_data = torch.load(io_path, weights_only=True)
        model = load_model(io_path.with_name(io_path.name.replace(".io.pt", ".pth")), device=device,
                           is_mask=io_data["is_mask"], adl_drop_rate=io_data["adl_drop_rate"]).eval()
        mask = io_data.get("mask_map")
        with torch.no_grad():
            out = model(io_data["input"].to(device), None if mask is None else mask.to(device))
        worst = max(worst, float((out.cpu() - io_data["output"]).abs().max()))
    found["fixtures_max_abs_difference"] = worst
    fixtures_ok = worst <= 1e-4

    torch.manual_seed(0)
    model = SMNet(**sizes.network).to(device).eval()
    x = torch.rand(1, 18, 128, 128, device=device)
    with torch.no_grad():
        full = reconstruct(model, x, 128, None)
        half = reconstruct(model, x, 128, "bf16").float()
    found["bf16_vs_fp32_max_abs_difference"] = float((full - half).abs().max())
    bf16_ok = found["bf16_vs_fp32_max_abs_difference"] <= 0.05

    model = SMNet(is_mask=True, **sizes.network).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    batch = {"input": torch.rand(2, 18, 64, 64), "label": torch.rand(2, 3, 64, 64),
             "segments": torch.randint(0, 4, (2, 64, 64))}
    tables = SegmentTables(4, device)
    tables.ratio.fill_(0.5)
    losses = training_step(model, batch, HDRLoss(0.0), optimizer, tables.ratio, tables.weight, device,
                           "bf16", None, torch.Generator(device=device).manual_seed(0), segment_ids=tables.ids)
    found["masked_bf16_step_loss"] = round(float(losses["loss"]), 5)
    step_ok = bool(torch.isfinite(losses["loss"])) and weights_are_finite(list(model.parameters()))
    found["passed"] = fixtures_ok and bf16_ok and step_ok
    return found


def forward(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """The default network on one bracket: float32 and bf16, ours against the released way."""
    torch.manual_seed(0)
    model = SMNet(**sizes.network).to(device).eval()
    height, width = sizes.forward
    x = torch.rand(1, 18, height, width)
    found: dict[str, Any] = {"size": f"{height}x{width}", "parameters": sum(p.numel() for p in model.parameters())}
    for amp in (None, "bf16"):
        name = amp or "fp32"
        reset_peak(device)
        with torch.inference_mode():
            seconds = median_time(lambda: predict(model, x, device, InferenceSettings(amp=amp)), device,
                                  repeats=sizes.repeats, warmup=1)
        found[f"{name}_seconds"] = round(seconds, 4)
        found[f"{name}_peak_memory_gib"] = peak_memory_gib(device)
    padded = torch.nn.functional.pad(x, (0, (-width) % 128, 0, (-height) % 128), mode="reflect").to(device)
    probe = MatmulProbe(device, size=1024 if device.type == "cuda" else 256)
    with torch.inference_mode(), autocast_context(device, "bf16"):
        ours, theirs = time_alternately([lambda: model(padded), lambda: released_forward(model, padded)], [1, 1],
                                        probe, repeats=sizes.repeats, warmup=1)
    found["bf16_ours_vs_released_time_ratio"] = round(paired_ratio(ours, theirs), 3)
    found["bf16_released_seconds"] = round(theirs.seconds, 4)
    return found


def training(device: torch.device, sizes: Sizes, num_workers: int, workdir: Path) -> dict[str, Any]:
    """Masked bf16 steps fed by the real loader; the time blocked on the loader is the data wait."""
    data = make_dataset(workdir / "data", num_train=sizes.scenes, num_test=0, size=sizes.scene_size, seed=0)
    segment_split(data, "Training", lambda image: superpixel_masks(image, n_segments=32), min_area=50,
                  progress=False)
    dataset = HDRTrainDataset(data, "Training", sizes.crop, repeat=1000, with_masks=True, cache="npy")
    for _ in dataset.scenes():  # fills the npy cache, as the trainer's check before the first step does
        pass
    loader = torch.utils.data.DataLoader(dataset, batch_size=sizes.batch, shuffle=True, num_workers=num_workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=num_workers > 0)
    model = SMNet(is_mask=True, **sizes.network).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    ids = np.unique(np.concatenate([np.unique(scene.segments) for scene in dataset.scenes()]))
    tables = SegmentTables(torch.from_numpy(ids), device)
    tables.ratio.fill_(0.5)
    loss_fn = HDRLoss(0.0).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    amp, _ = resolve_amp("bf16", device)
    batches = iter(loader)
    waited, steps_time = [], []
    for step in range(sizes.steps + 2):  # two warm-up steps
        start = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        training_step(model, batch, loss_fn, optimizer, tables.ratio, tables.weight, device, amp, None, generator,
                      segment_ids=tables.ids)
        synchronize(device)
        if step >= 2:
            waited.append(fetched - start)
            steps_time.append(time.perf_counter() - start)
    total = sum(steps_time)
    return {"batch": sizes.batch, "crop": sizes.crop, "num_workers": num_workers, "steps": sizes.steps,
            "samples_per_second": round(sizes.batch * sizes.steps / total, 1),
            "median_step_ms": round(1e3 * statistics.median(steps_time), 2),
            "data_wait_share": round(sum(waited) / total, 3)}


def compile_against_eager(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    torch.manual_seed(0)
    model = SMNet(**sizes.network).to(device).eval()
    x = torch.rand(1, 18, sizes.compile_size, sizes.compile_size, device=device)
    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.inference_mode():
        out_compiled = compiled(x)
        synchronize(device)
        compile_seconds = time.perf_counter() - start
        out_eager = model(x)
        eager = median_time(lambda: model(x), device, repeats=sizes.repeats, warmup=1)
        fast = median_time(lambda: compiled(x), device, repeats=sizes.repeats, warmup=1)
    return {"size": sizes.compile_size, "compile_seconds": round(compile_seconds, 1),
            "eager_seconds": round(eager, 4), "compiled_seconds": round(fast, 4),
            "compiled_over_eager": round(fast / eager, 3),
            "max_abs_difference": float((out_compiled - out_eager).abs().max()),
            "passed": bool(torch.allclose(out_compiled, out_eager, atol=1e-3))}


def tiled_against_one_pass(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    torch.manual_seed(0)
    model = SMNet(**sizes.network).to(device).eval()
    height, width = sizes.forward
    x = torch.rand(1, 18, height, width)
    label = torch.rand(1, 3, height, width)
    settings = InferenceSettings(amp="bf16" if device.type == "cuda" else None)
    tiled_settings = InferenceSettings(tile=sizes.tile, tile_overlap=sizes.tile_overlap, amp=settings.amp)
    with torch.inference_mode():
        one = predict(model, x, device, settings)
        reset_peak(device)
        tiled = predict(model, x, device, tiled_settings)
        peak = peak_memory_gib(device)
        seconds = median_time(lambda: predict(model, x, device, tiled_settings), device, repeats=sizes.repeats,
                              warmup=0)
    return {"tile": sizes.tile, "overlap": sizes.tile_overlap, "tiled_seconds": round(seconds, 4),
            "tiled_peak_memory_gib": peak, "max_abs_difference": float((one - tiled).abs().max()),
            "psnr_mu_change_db": round(float(psnr_mu(tiled[0], label[0]) - psnr_mu(one[0], label[0])), 4)}


# --- command line -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: the code path in a minute or two")
    parser.add_argument("--num_workers", type=int, default=8, help="loader processes of the training part")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_output"), help="folder for the report and log")
    parser.add_argument("--skip", nargs="*", default=[], choices=("checks", "forward", "training", "compile", "tiled"),
                        help="parts not to run")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    sizes = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gpu_check.log", "w") as log, tempfile.TemporaryDirectory() as workdir:
        report = Report(log)
        report.say(f"gpu_check on {device}{' (quick sizes)' if args.quick else ''}: {' '.join(sys.argv)}")
        report.run("environment", lambda: environment(device))
        parts = {"checks": lambda: checks(device, sizes), "forward": lambda: forward(device, sizes),
                 "training": lambda: training(device, sizes, args.num_workers, Path(workdir)),
                 "compile": lambda: compile_against_eager(device, sizes),
                 "tiled": lambda: tiled_against_one_pass(device, sizes)}
        for name, part in parts.items():
            if name not in args.skip:
                with contextlib.redirect_stderr(sys.stderr):
                    report.run(name, part)
        verdict = "all parts ran and passed" if report.ok else "some parts FAILED (see above)"
        report.say(f"== {verdict}; report in {args.out / 'gpu_report.json'}")
    summary = {"device": str(device), "quick": args.quick, "ok": report.ok,
               "parts": {name: {k: v for k, v in part.items() if k != "traceback"} | (
                   {"traceback": part["traceback"]} if "traceback" in part else {})
                   for name, part in report.parts.items()}}
    (args.out / "gpu_report.json").write_text(json.dumps(summary, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
