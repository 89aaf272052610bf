"""Side-by-side previews of a reconstruction: reference LDR | prediction | label | error map,
and with a region map (``evaluation.regions``) a fifth panel showing the regions."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from utils.tonemap import mu_tonemap, to_uint8, tonemap_for_display

PANEL_TITLES = ("reference LDR", "prediction", "label", "|mu error|")
REGION_PANEL_TITLE = "regions"
REGION_COLOURS = np.array([[255, 190, 0], [230, 30, 30], [40, 100, 255]], dtype=np.float32)
"""RGB of the regions in ``evaluation.regions.REGIONS`` order: clipped yellow, moving red, static blue."""


def region_panel(ref_ldr: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """8-bit RGB picture of a region map: each region's colour (``REGION_COLOURS``) blended half
    and half with the grey reference LDR, so the scene stays recognisable under the colours."""
    grey = np.asarray(ref_ldr, dtype=np.float32).mean(axis=-1, keepdims=True)
    return to_uint8(0.5 * grey + 0.5 * REGION_COLOURS[regions] / 255.0)


def mu_error_heatmap(pred: np.ndarray, label: np.ndarray, max_error: float = 0.1) -> np.ndarray:
    """Colour-coded per-pixel |T(pred) - T(label)| (μ-law, mean over channels) as 8-bit RGB.

    The error is divided by ``max_error`` before the colormap (TURBO), so ``max_error`` and
    above show as the hottest colour and zero error as the coldest.
    """
    pred_mu = mu_tonemap(np.clip(np.asarray(pred, dtype=np.float32), 0.0, 1.0))
    label_mu = mu_tonemap(np.clip(np.asarray(label, dtype=np.float32), 0.0, 1.0))
    error = np.abs(pred_mu - label_mu).mean(axis=-1)
    heat_bgr = cv2.applyColorMap(to_uint8(error / max_error), cv2.COLORMAP_TURBO)
    return cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)


def _with_title(panel: np.ndarray, title: str, bar_height: int) -> np.ndarray:
    """Put a black caption bar with ``title`` above an 8-bit RGB panel."""
    bar = np.zeros((bar_height, panel.shape[1], 3), dtype=np.uint8)
    scale = bar_height / 40.0
    cv2.putText(bar, title, (4, int(bar_height * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), max(1, int(round(scale * 2))), cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def side_by_side(
    ref_ldr: np.ndarray,
    pred: np.ndarray,
    label: np.ndarray,
    operator: str = "mu",
    max_error: float = 0.1,
    titles: bool = True,
    regions: np.ndarray | None = None,
    **params: float,
) -> np.ndarray:
    """Reference LDR | prediction | label | μ-law error map, as one 8-bit RGB image, and with
    ``regions`` (an H×W region map) the region picture of ``region_panel`` after the error map.

    ``ref_ldr`` is the (display-referred) reference exposure in [0, 1]; ``pred`` and ``label`` are
    linear H×W×3. Prediction and label are tone mapped together as one image, so the adaptive
    OpenCV operators use shared statistics and equal pixels look equal in both panels.
    ``operator``/``params`` are those of ``tonemap_for_display``; ``max_error`` scales the
    heat map (see ``mu_error_heatmap``). With ``titles`` each panel gets a caption bar.
    """
    width = pred.shape[1]
    joint = tonemap_for_display(np.concatenate([pred, label], axis=1), operator, **params)
    panels = [
        to_uint8(ref_ldr),
        joint[:, :width],
        joint[:, width:],
        mu_error_heatmap(pred, label, max_error),
    ]
    panel_titles = PANEL_TITLES
    if regions is not None:
        panels.append(region_panel(ref_ldr, regions))
        panel_titles = (*PANEL_TITLES, REGION_PANEL_TITLE)
    if titles:
        bar_height = max(12, min(40, pred.shape[0] // 12))
        panels = [_with_title(p, t, bar_height) for p, t in zip(panels, panel_titles)]
    return np.concatenate(panels, axis=1)


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write an 8-bit RGB image (PNG, JPEG, ... from the suffix); the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
