"""Small pieces every command line of the project shares: boolean flags, device options and the
exit-code contract (0 done, 1 a checkpoint failed, 2 unusable input)."""
from __future__ import annotations

import argparse

EXIT_OK = 0
EXIT_FAILED_CHECKPOINT = 1
EXIT_USAGE = 2
AMP_CHOICES = ("none", "bf16", "fp16")


class UsageError(ValueError):
    """Options or inputs that cannot be used; reported in one line, without a traceback."""


def str2bool(value: str | bool) -> bool:
    """``--is_curriculum``, ``--is_curriculum True`` and ``--is_curriculum false`` all parse."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def add_flag(group: argparse._ActionsContainer, name: str, default: bool, help: str) -> None:
    """A boolean option written bare (true) or with a value, as the released scripts take them."""
    group.add_argument(name, type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)


def add_device_options(group: argparse._ActionsContainer, device_help: str = "") -> None:
    """``--device`` and ``--amp``."""
    group.add_argument("--device", default="auto",
                       help=device_help or "auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    group.add_argument("--amp", choices=AMP_CHOICES, default="none",
                       help="autocast precision; fp16 only on CUDA (falls back to float32 on the CPU)")
