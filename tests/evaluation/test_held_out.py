"""Held-out scene sets: generated from the held-out maps, scored with the baselines and regions,
summed up in one table with the goal checked per set."""
from __future__ import annotations

import csv
import json
import math

import pytest

from datasets.real_scenes import SceneSpread
from evaluation import held_out
from evaluation.held_out import HELD_OUT_SETS, HeldOutSet, goal_lines, main
from models.checkpoint import save_model
from models.registry import smnet_tiny


@pytest.fixture
def small_sets(monkeypatch):
    sets = {"plain": HeldOutSet(3, 2, (48, 64)),
            "hard": HeldOutSet(4, 1, (48, 64), spacings=(4.0,), spread=SceneSpread(clipped=(0.2, 0.3)))}
    monkeypatch.setattr(held_out, "HELD_OUT_SETS", sets)
    return sets


def test_every_set_is_scored_against_both_baselines(tmp_path, small_sets, capsys):
    save_model(tmp_path / "residual.pth", smnet_tiny(reference_residual=True))
    assert main(["--pretrained_model", str(tmp_path / "residual.pth"), "--out", str(tmp_path / "out"),
                 "--sets", "plain", "hard"]) == 0
    with open(tmp_path / "out" / "held_out.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["set"], row["method"]) for row in rows] == [
        (name, method) for name in ("plain", "hard")
        for method in ("network", "reference exposure", "Debevec merge (OpenCV)")]
    by = {(row["set"], row["method"]): row for row in rows}
    for name, spec in small_sets.items():
        assert int(by[name, "network"]["scenes"]) == spec.count
        assert float(by[name, "reference exposure"]["static_error_ratio"]) == 1.0
        # an untrained reference-residual network is the reference exposure itself
        assert math.isclose(float(by[name, "network"]["psnr_mu"]), float(by[name, "reference exposure"]["psnr_mu"]),
                            abs_tol=0.01)
    printed = capsys.readouterr().out
    assert "plain: PSNR-μ " in printed and "static error 1.0× the reference" in printed and "NOT met" in printed
    assert "by source radiance map" in printed

    scores = []  # (map, the network's PSNR-μ) of every scored scene
    for name in small_sets:
        scenes = json.loads((tmp_path / "out" / name / "scenes.json").read_text())["Test"]
        with open(tmp_path / "out" / f"results_{name}" / "metrics.csv") as handle:
            scores += [(scenes[row["scene"]]["background"], float(row["psnr_mu"])) for row in csv.DictReader(handle)]
    with open(tmp_path / "out" / "held_out_by_map.csv") as handle:
        by_map = list(csv.DictReader(handle))
    maps = {source for source, _ in scores}
    for method in ("network", "reference exposure", "Debevec merge (OpenCV)"):
        counts = {row["map"]: int(row["scenes"]) for row in by_map if row["method"] == method}
        assert counts == {source: sum(s == source for s, _ in scores) for source in maps}
    for row in by_map:
        if row["method"] == "network":
            values = [mu for source, mu in scores if source == row["map"]]
            assert math.isclose(float(row["psnr_mu"]), sum(values) / len(values), rel_tol=1e-9)


def test_goal_lines_check_each_margin():
    def rows(mu, lin, ratio):
        return [dict(set="s", method="network", psnr_mu=30 + mu, psnr_l=30 + lin, static_error_ratio=ratio),
                dict(set="s", method="reference exposure", psnr_mu=30.0, psnr_l=20.0, static_error_ratio=1.0),
                dict(set="s", method="Debevec merge (OpenCV)", psnr_mu=25.0, psnr_l=30.0, static_error_ratio=9.0)]

    assert goal_lines(rows(0.6, 1.1, 4.0), 0.5, 1.0, 5.0)[0].endswith(": met")
    for failing in (rows(0.4, 1.1, 4.0), rows(0.6, 0.9, 4.0), rows(0.6, 1.1, 6.0)):
        assert goal_lines(failing, 0.5, 1.0, 5.0)[0].endswith("NOT met")


def test_the_released_sets_keep_their_scenes():
    """The six sets scored before keep the generator settings they were made with."""
    assert {name: (spec.seed, spec.count, spec.size) for name, spec in HELD_OUT_SETS.items()
            if spec.spread == SceneSpread() and spec.spacings == (2.0, 3.0)} == {
        "seed3": (3, 3, (192, 256)), "seed5": (5, 2, (160, 224)), "seed11": (11, 12, (256, 320)),
        "seed2026": (2026, 12, (256, 320)), "seed2027": (2027, 6, (384, 512)), "seed4242": (4242, 12, (320, 448)),
        "seed7070": (7070, 12, (256, 320))}


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["--pretrained_model", str(tmp_path / "none.pth"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --pretrained_model")


def test_a_checkpoint_that_does_not_load_is_one_line_before_any_set_is_made(tmp_path, capsys):
    (tmp_path / "bad.pth").write_text("not a checkpoint")
    assert main(["--pretrained_model", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: checkpoint") and "bad.pth" in err
    assert not (tmp_path / "out").exists()
