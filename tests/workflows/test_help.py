"""Every command's ``--help`` states each default once."""
from __future__ import annotations

import re

import pytest

from datasets import real_scenes
from evaluation import cli as test_cli
from evaluation import held_out, predict
from segmask import segment
from training.options import parse_args as training_args

COMMANDS = {
    "train_phase1.py": lambda: training_args(1, ["--help"]),
    "train_phase2.py": lambda: training_args(2, ["--help"]),
    "test.py": lambda: test_cli.parse_args(["--help"]),
    "predict.py": lambda: predict.parse_args(["--help"]),
    "segment.py": lambda: segment.parse_args(["--help"]),
    "datasets.real_scenes": lambda: real_scenes.parse_args(["--help"]),
    "evaluation.held_out": lambda: held_out.parse_args(["--help"]),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        COMMANDS[command]()
    text = " ".join(capsys.readouterr().out.split())
    assert "(default" in text
    assert not re.search(r"\(default[^()]*\)\s*\(default", text)
    assert "(default: None)" not in text


def test_tile_options_mean_the_same_in_every_command(capsys):
    assert predict.parse_args(["--pretrained_model", "m.pth", "in"]).tile == "auto"
    assert predict.parse_args(["--pretrained_model", "m.pth", "--tile", "0", "in"]).tile == 0  # one pass
    assert predict.parse_args(["--pretrained_model", "m.pth", "--tile", "256", "in"]).tile == 256
    common = ["--dataset_dir", "d", "--pretrained_model", "m.pth"]
    assert test_cli.parse_args(common).tile == 0
    assert test_cli.parse_args([*common, "--tile", "256"]).tile == 256
    with pytest.raises(SystemExit):
        test_cli.parse_args([*common, "--tile", "auto"])  # test.py keeps the released one pass unless asked
    assert "--tile" in capsys.readouterr().err
