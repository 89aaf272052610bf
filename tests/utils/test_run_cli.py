"""run_cli: the user's mistakes are one line and an exit code; a bug of ours keeps its traceback,
after a line asking to report it."""
from __future__ import annotations

import errno

import pytest

from datasets.scene import SceneError
from models.checkpoint import CheckpointError
from utils.cli import BUG_REPORT, EXIT_FAILED_CHECKPOINT, EXIT_USAGE, RunFailed, UsageError, run_cli
from utils.safe_load import TensorFileError


def raising(err: BaseException):
    def body() -> int:
        raise err
    return body


@pytest.mark.parametrize("err, code", [
    (UsageError("--lr: bad"), EXIT_USAGE), (SceneError("scene x: bad"), EXIT_USAGE),
    (TensorFileError("f: bad"), EXIT_USAGE), (CheckpointError("c: bad"), EXIT_FAILED_CHECKPOINT),
    (RunFailed("diverged"), EXIT_FAILED_CHECKPOINT), (FileNotFoundError(errno.ENOENT, "gone", "f"), EXIT_USAGE),
    (OSError(errno.ENOSPC, "full", "f"), 1),
])
def test_the_users_mistakes_are_one_line(capsys, err, code):
    assert run_cli(raising(err)) == code
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.parametrize("err", [ValueError("operands could not be broadcast"), KeyError("state_dict"),
                                 TypeError("unsupported operand")])
def test_a_bug_keeps_its_traceback_and_asks_for_a_report(capsys, err):
    with pytest.raises(type(err)):
        run_cli(raising(err))
    assert BUG_REPORT in capsys.readouterr().err


def test_debug_keeps_the_traceback_of_a_mistake_too():
    with pytest.raises(UsageError):
        run_cli(raising(UsageError("--lr: bad")), debug=True)
