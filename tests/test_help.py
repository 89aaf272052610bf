"""Every command's ``--help`` states each default once."""
from __future__ import annotations

import re

import pytest

from evaluation import cli as test_cli
from evaluation import predict
from segmask import segment
from training.options import parse_args as training_args

COMMANDS = {
    "train_phase1.py": lambda: training_args(1, ["--help"]),
    "train_phase2.py": lambda: training_args(2, ["--help"]),
    "test.py": lambda: test_cli.parse_args(["--help"]),
    "predict.py": lambda: predict.parse_args(["--help"]),
    "segment.py": lambda: segment.parse_args(["--help"]),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        COMMANDS[command]()
    text = " ".join(capsys.readouterr().out.split())
    assert "(default" in text
    assert not re.search(r"\(default[^()]*\)\s*\(default", text)
    assert "(default: None)" not in text
