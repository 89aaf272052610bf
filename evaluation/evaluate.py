"""Evaluate a network (and the classical baselines) on whole scenes with the metrics of
``evaluation.metrics``.

Used by ``test.py`` and by the trainer's periodic test-split evaluation, so both report the
same numbers for the same weights.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from datasets.preprocess import sample_exposures
from evaluation.baselines import debevec_baseline, reference_exposure_baseline
from evaluation.merger import HDRMerger
from evaluation.metrics import MetricSettings
from evaluation.regions import RegionSettings, region_columns, region_means
from evaluation.tables import SCENE_KEY, MetricTable, write_rows_csv
from models.inference import InferenceSettings, eval_mode

SceneCallback = Callable[[Mapping[str, object], torch.Tensor], None]

BASELINES: dict[str, Callable[[list[np.ndarray], list[float]], np.ndarray]] = {
    "reference": reference_exposure_baseline,
    "debevec": debevec_baseline,
}
"""Classical baselines by short name: the reference exposure alone and OpenCV's Debevec merge."""

BASELINE_TITLES = {"reference": "reference exposure", "debevec": "Debevec merge (OpenCV)"}


@dataclass
class EvaluationResult:
    """Per-scene metrics, the seconds each scene's reconstruction took (transfers included) and,
    when asked for, the per-scene metrics by region (``evaluation.regions``)."""

    table: MetricTable
    seconds: dict[str, float] = field(default_factory=dict)
    regions: MetricTable | None = None

    def mean_seconds(self) -> float:
        return float(np.mean(list(self.seconds.values()))) if self.seconds else float("nan")

    def rows(self) -> list[dict[str, object]]:
        """Per-scene rows: the metrics, followed by the region columns when there are any."""
        by_scene = {row[SCENE_KEY]: row for row in self.regions.rows} if self.regions is not None else {}
        return [{**row, **by_scene.get(row[SCENE_KEY], {})} for row in self.table.rows]

    def write_csv(self, path: str | Path) -> None:
        """``metrics.csv``: one line per scene, the region columns after the others."""
        write_rows_csv(path, self.rows())

    def region_means(self) -> dict[str, dict[str, float]] | None:
        """Per-region means over scenes (``evaluation.regions.region_means``), None without regions."""
        return None if self.regions is None else region_means(self.regions.rows)


def _score(result: EvaluationResult, scene: str, sample: Mapping[str, object], prediction: torch.Tensor,
           metrics: MetricSettings, regions: RegionSettings | None) -> None:
    """Add one labelled scene's metrics (and region metrics) to ``result``."""
    label = torch.as_tensor(sample["label"])
    result.table.add(scene, metrics.compute(prediction, label))
    if result.regions is not None and regions is not None:
        result.regions.add(scene, region_columns(prediction, sample, regions))


def evaluate_scenes(
    model: nn.Module,
    scenes: Iterable[Mapping[str, object]],
    device: torch.device | str,
    inference: InferenceSettings = InferenceSettings(),
    metrics: MetricSettings = MetricSettings(),
    progress: bool = False,
    on_scene: SceneCallback | None = None,
    regions: RegionSettings | None = None,
) -> EvaluationResult:
    """Reconstruct every scene (samples of ``HDRFullImageDataset``), time it and tabulate its metrics.

    ``on_scene(sample, prediction)`` gets each scene's 3×H×W float32 CPU prediction (for writing
    outputs), from ``HDRMerger.merge_network_input``: the released protocol with ``inference``'s
    settings, as ``predict.py`` merges. Scenes without a label are reconstructed and timed but get no metrics row. With
    ``regions``, every labelled scene is also scored by region (``EvaluationResult.regions``).
    The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    merger = HDRMerger.from_model(model, device, inference)
    result = EvaluationResult(MetricTable(), regions=MetricTable() if regions is not None else None)
    with eval_mode(model):
        for sample in tqdm(scenes, desc="evaluate", unit="scene", disable=not progress, leave=False):
            name = str(sample["scene"])
            inputs = torch.as_tensor(sample["input"]).unsqueeze(0)
            start = time.perf_counter()
            prediction = merger.merge_network_input(inputs)[0]
            result.seconds[name] = time.perf_counter() - start
            if on_scene is not None:
                on_scene(sample, prediction)
            if "label" in sample:
                _score(result, name, sample, prediction, metrics, regions)
    return result


BaselineCallback = Callable[[str, Mapping[str, object], torch.Tensor], None]


def evaluate_baselines(
    scenes: Iterable[Mapping[str, object]],
    names: Iterable[str] = tuple(BASELINES),
    metrics: MetricSettings = MetricSettings(),
    progress: bool = False,
    on_scene: BaselineCallback | None = None,
    regions: RegionSettings | None = None,
) -> dict[str, EvaluationResult]:
    """Evaluate the classical baselines (keys of ``BASELINES``) on labelled scenes with the
    network's metrics (and with ``regions``, by region). ``on_scene(name, sample, prediction)``
    gets each 3×H×W prediction."""
    names = list(names)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected some of {list(BASELINES)}")
    results = {name: EvaluationResult(MetricTable(), regions=MetricTable() if regions is not None else None)
               for name in names}
    for sample in tqdm(scenes, desc="baselines", unit="scene", disable=not progress, leave=False):
        ldrs, stops = sample_exposures(sample)
        scene = str(sample["scene"])
        for name in names:
            start = time.perf_counter()
            hdr = BASELINES[name](ldrs, stops)
            results[name].seconds[scene] = time.perf_counter() - start
            prediction = torch.from_numpy(np.ascontiguousarray(hdr, dtype=np.float32)).permute(2, 0, 1)
            if on_scene is not None:
                on_scene(name, sample, prediction)
            if "label" in sample:
                _score(results[name], scene, sample, prediction, metrics, regions)
    return results
