"""Tables of metrics: per-scene rows and their means, one row per method, as text, CSV and JSON.

One writer serves every table the evaluation produces (``metrics.csv`` per scene,
``baselines.csv`` / ``checkpoints.csv`` per method, ``summary.json``); every file is written
atomically.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic_io import atomic_path, write_text_atomically

SCENE_KEY = "scene"
METHOD_KEY = "method"
MEAN_LABEL = "mean"


def metric_columns(rows: Iterable[Mapping[str, Any]], key: str = SCENE_KEY) -> list[str]:
    """Metric column names in first-seen order (every key except the row's ``key`` column)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update((name, None) for name in row if name not in (key, SCENE_KEY, METHOD_KEY))
    return list(columns)


def mean_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Plain mean over rows of every metric column (over the rows that have it)."""
    return {column: float(np.mean([row[column] for row in rows if column in row]))
            for column in metric_columns(rows)}


def format_value(column: str, value: Any) -> str:
    """PSNR-like values with 2 decimals, SSIM 4, the cvvdp JOD, seconds and shares (fractions) 3,
    counts as integers; '-' when missing."""
    if value is None or value == "":
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, (int, float)):
        return str(value)
    digits = 4 if "ssim" in column else 3 if column in ("cvvdp", "seconds") or column.endswith("share") else 2
    return f"{value:.{digits}f}"


def format_table(rows: Sequence[Mapping[str, Any]], key: str = SCENE_KEY, with_mean: bool = True) -> str:
    """Plain-text table: the ``key`` column left-aligned, every metric column right-aligned,
    and with ``with_mean`` a rule and the row of means at the bottom."""
    columns = metric_columns(rows, key)
    body = [[str(row.get(key, "")), *(format_value(c, row.get(c)) for c in columns)] for row in rows]
    footer = []
    if with_mean and rows:
        means = mean_metrics(rows)
        footer = [[MEAN_LABEL, *(format_value(c, means.get(c)) for c in columns)]]
    lines = [[key, *columns], *body, *footer]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rendered = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
                for line in lines]
    rule = "-" * len(rendered[0])
    if footer:
        return "\n".join([rendered[0], rule, *rendered[1:-1], rule, rendered[-1]])
    return "\n".join([rendered[0], rule, *rendered[1:]])


def write_rows_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], key: str = SCENE_KEY) -> None:
    """One CSV line per row at full precision, the ``key`` column first."""
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[key, *metric_columns(rows, key)], restval="")
        writer.writeheader()
        writer.writerows(rows)


def json_ready(value: Any) -> Any:
    """Plain JSON values: paths become strings, dataclasses dicts, NaN null (infinity stays)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_ready(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Indented JSON (see ``json_ready``), written atomically."""
    write_text_atomically(path, json.dumps(json_ready(data), indent=2) + "\n")


def comparison_rows(means: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """Rows ``{"method": name, **means}`` in the given order."""
    return [{METHOD_KEY: name, **values} for name, values in means.items()]


def means_with_seconds(means: Mapping[str, float], seconds: Iterable[float]) -> dict[str, float]:
    """Mean metrics plus the mean seconds per scene (a 'seconds' column)."""
    seconds = list(seconds)
    return {**means, "seconds": sum(seconds) / len(seconds) if seconds else float("nan")}


class MetricTable:
    """Per-scene metric rows, their plain means over scenes, and their CSV / JSON forms."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, scene: str, metrics: Mapping[str, float]) -> dict[str, Any]:
        """Append the metrics of one scene and return the stored row."""
        row = {SCENE_KEY: scene, **metrics}
        self.rows.append(row)
        return row

    def __len__(self) -> int:
        return len(self.rows)

    def columns(self) -> list[str]:
        return metric_columns(self.rows)

    def means(self) -> dict[str, float]:
        return mean_metrics(self.rows)

    def format(self) -> str:
        return format_table(self.rows)

    def write_csv(self, path: str | Path) -> None:
        """One line per scene (full precision), metric columns in first-seen order."""
        write_rows_csv(path, self.rows)

    def summary(self, **extra: Any) -> dict[str, Any]:
        """JSON-ready summary: number of scenes, the means, and any extra fields given."""
        return {**extra, "num_scenes": len(self.rows), "means": self.means()}

    def write_json(self, path: str | Path, **extra: Any) -> None:
        """Write ``summary(**extra)`` as indented JSON (infinite PSNR is written as Infinity)."""
        write_json(path, self.summary(**extra))
