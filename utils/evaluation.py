"""Evaluate a network on whole scenes with the metrics of ``utils.metrics``.

Used by ``test.py`` and by the trainer's periodic test-split evaluation, so both report the
same numbers for the same weights.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from tqdm import tqdm

from models.inference import TEST_PAD_MULTIPLE, eval_mode, reconstruct
from utils.metrics import MetricTable, compute_metrics

SceneCallback = Callable[[Mapping[str, object], torch.Tensor], None]


def evaluate_model(
    model: nn.Module,
    scenes: Iterable[Mapping[str, object]],
    device: torch.device | str,
    multiple: int = TEST_PAD_MULTIPLE,
    amp: str | None = None,
    ssim_variant: str = "released",
    with_pu21: bool = False,
    progress: bool = False,
    on_scene: SceneCallback | None = None,
) -> MetricTable:
    """Reconstruct every scene (samples of ``HDRFullImageDataset``) and tabulate its metrics.

    ``on_scene(sample, prediction)`` is called with each scene's 3×H×W float32 CPU prediction
    (for writing outputs). The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    table = MetricTable()
    with eval_mode(model):
        for sample in tqdm(scenes, desc="evaluate", unit="scene", disable=not progress, leave=False):
            inputs = torch.as_tensor(sample["input"]).to(device).unsqueeze(0)
            prediction = reconstruct(model, inputs, multiple, amp)[0].cpu()
            if on_scene is not None:
                on_scene(sample, prediction)
            if "label" in sample:
                table.add(str(sample["scene"]), compute_metrics(
                    prediction, torch.as_tensor(sample["label"]), ssim_variant, with_pu21=with_pu21))
    return table
