"""The one-command GPU check runs its whole code path on the CPU at small sizes, so it cannot rot
between the rare occasions a GPU is at hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("environment", "checks", "forward", "training", "compile", "tiled")


def test_gpu_check_quick_on_the_cpu_writes_a_complete_passing_report(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--quick",
                           "--num_workers", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["ok"] and set(report["parts"]) == set(PARTS)
    assert all(part["ok"] for part in report["parts"].values())
    assert report["parts"]["checks"]["fixtures_max_abs_difference"] <= 1e-4
    assert report["parts"]["training"]["samples_per_second"] > 0
    assert 0 <= report["parts"]["training"]["data_wait_share"] <= 1
    assert report["parts"]["compile"]["passed"]
    log = (tmp_path / "gpu_check.log").read_text()
    assert all(f"== {name}" in log for name in PARTS)


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    from benchmarks import gpu_check

    def broken(device, sizes):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check, "forward", broken)
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--skip", "checks", "training", "compile"])
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert code == 1 and not report["ok"]
    assert not report["parts"]["forward"]["ok"] and "illegal memory access" in report["parts"]["forward"]["error"]
    assert report["parts"]["tiled"]["ok"]
