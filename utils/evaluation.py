"""Evaluate a network (and the classical baselines) on whole scenes with the metrics of
``utils.metrics``.

Used by ``test.py`` and by the trainer's periodic test-split evaluation, so both report the
same numbers for the same weights.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.inference import TEST_PAD_MULTIPLE, eval_mode, reconstruct, reconstruct_tiled
from utils.baselines import debevec_baseline, reference_exposure_baseline
from utils.metrics import DEFAULT_PEAK_LUMINANCE, MetricTable, compute_metrics

SceneCallback = Callable[[Mapping[str, object], torch.Tensor], None]

CHANNELS_PER_EXPOSURE = 6
BASELINES: dict[str, Callable[[list[np.ndarray], list[float]], np.ndarray]] = {
    "reference": reference_exposure_baseline,
    "debevec": debevec_baseline,
}
"""Classical baselines by short name: the reference exposure alone and OpenCV's Debevec merge."""

BASELINE_TITLES = {"reference": "reference exposure", "debevec": "Debevec merge (OpenCV)"}


@dataclass
class EvaluationResult:
    """Per-scene metrics and the seconds each scene's reconstruction took (transfers included)."""

    table: MetricTable
    seconds: dict[str, float] = field(default_factory=dict)

    def mean_seconds(self) -> float:
        return float(np.mean(list(self.seconds.values()))) if self.seconds else float("nan")


def predict(model: nn.Module, inputs: torch.Tensor, device: torch.device | str,
            multiple: int = TEST_PAD_MULTIPLE, amp: str | None = None,
            tile: int = 0, tile_overlap: int = 32) -> torch.Tensor:
    """B×3×H×W float32 CPU prediction of CPU inputs: one pass on ``device`` (``tile`` 0), or
    tiles of ``tile`` pixels overlapping by ``tile_overlap`` (only one tile on the device)."""
    if tile > 0:
        return reconstruct_tiled(model, inputs, tile, tile_overlap, amp, multiple, device=device)
    return reconstruct(model, inputs.to(device), multiple, amp).cpu()


def evaluate_scenes(
    model: nn.Module,
    scenes: Iterable[Mapping[str, object]],
    device: torch.device | str,
    multiple: int = TEST_PAD_MULTIPLE,
    amp: str | None = None,
    ssim_variant: str = "released",
    with_pu21: bool = False,
    with_cvvdp: bool = False,
    peak_luminance: float = DEFAULT_PEAK_LUMINANCE,
    tile: int = 0,
    tile_overlap: int = 32,
    progress: bool = False,
    on_scene: SceneCallback | None = None,
) -> EvaluationResult:
    """Reconstruct every scene (samples of ``HDRFullImageDataset``), time it and tabulate its metrics.

    ``on_scene(sample, prediction)`` gets each scene's 3×H×W float32 CPU prediction (for writing
    outputs). Scenes without a label are reconstructed and timed but get no metrics row.
    The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    result = EvaluationResult(MetricTable())
    with eval_mode(model):
        for sample in tqdm(scenes, desc="evaluate", unit="scene", disable=not progress, leave=False):
            name = str(sample["scene"])
            inputs = torch.as_tensor(sample["input"]).unsqueeze(0)
            start = time.perf_counter()
            prediction = predict(model, inputs, device, multiple, amp, tile, tile_overlap)[0]
            result.seconds[name] = time.perf_counter() - start
            if on_scene is not None:
                on_scene(sample, prediction)
            if "label" in sample:
                result.table.add(name, compute_metrics(
                    prediction, torch.as_tensor(sample["label"]), ssim_variant, with_pu21=with_pu21,
                    with_cvvdp=with_cvvdp, peak_luminance=peak_luminance))
    return result


# ---------------------------------------------------------------------------
# Classical baselines on the same scenes
# ---------------------------------------------------------------------------

def exposures_from_sample(sample: Mapping[str, object]) -> tuple[list[np.ndarray], list[float]]:
    """The LDR exposures (H×W×3 float32 in [0, 1], shortest first) and their stops, recovered
    from a sample's network input ``[LDR**2.2 / t, LDR]`` per exposure."""
    inputs = torch.as_tensor(sample["input"])
    count = inputs.shape[0] // CHANNELS_PER_EXPOSURE
    ldrs = [inputs[CHANNELS_PER_EXPOSURE * i + 3:CHANNELS_PER_EXPOSURE * (i + 1)].permute(1, 2, 0).numpy()
            for i in range(count)]
    stops = [float(s) for s in torch.as_tensor(sample["exposures"]).reshape(-1)]
    if len(stops) != count:
        raise ValueError(f"scene {sample['scene']}: {count} exposures in the input but {len(stops)} stops")
    return ldrs, stops


def reference_ldr(sample: Mapping[str, object]) -> np.ndarray:
    """The reference (middle) exposure of a sample as H×W×3 float32 in [0, 1]."""
    ldrs, _ = exposures_from_sample(sample)
    return ldrs[len(ldrs) // 2]


BaselineCallback = Callable[[str, Mapping[str, object], torch.Tensor], None]


def evaluate_baselines(
    scenes: Iterable[Mapping[str, object]],
    names: Iterable[str] = tuple(BASELINES),
    ssim_variant: str = "released",
    with_pu21: bool = False,
    with_cvvdp: bool = False,
    peak_luminance: float = DEFAULT_PEAK_LUMINANCE,
    progress: bool = False,
    on_scene: BaselineCallback | None = None,
) -> dict[str, EvaluationResult]:
    """Evaluate the classical baselines (keys of ``BASELINES``) on labelled scenes with the
    network's metrics. ``on_scene(name, sample, prediction)`` gets each 3×H×W prediction."""
    names = list(names)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected some of {list(BASELINES)}")
    results = {name: EvaluationResult(MetricTable()) for name in names}
    for sample in tqdm(scenes, desc="baselines", unit="scene", disable=not progress, leave=False):
        ldrs, stops = exposures_from_sample(sample)
        scene = str(sample["scene"])
        for name in names:
            start = time.perf_counter()
            hdr = BASELINES[name](ldrs, stops)
            results[name].seconds[scene] = time.perf_counter() - start
            prediction = torch.from_numpy(np.ascontiguousarray(hdr, dtype=np.float32)).permute(2, 0, 1)
            if on_scene is not None:
                on_scene(name, sample, prediction)
            if "label" in sample:
                results[name].table.add(scene, compute_metrics(
                    prediction, torch.as_tensor(sample["label"]), ssim_variant, with_pu21=with_pu21,
                    with_cvvdp=with_cvvdp, peak_luminance=peak_luminance))
    return results
