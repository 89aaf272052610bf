"""Small pieces every command line of the project shares: boolean flags, device options and the
exit-code contract (0 done, 1 a checkpoint failed, 2 unusable input)."""
from __future__ import annotations

import argparse
from typing import Any, Mapping

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
    group.add_argument("--no_cuda", dest="device", action="store_const", const="cpu",
                       help="run on the CPU (the same as --device cpu)")


class MapChoice(argparse.Action):
    """An option whose values stand for another option's values (``--cache_choice 1`` →
    ``cache="npy"``): it stores ``mapping[value]`` into ``dest``."""

    def __init__(self, option_strings: list[str], dest: str, mapping: dict[str, Any], **kwargs: Any) -> None:
        self.mapping = mapping
        super().__init__(option_strings, dest, choices=list(mapping), **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, self.mapping[values])


INERT_NOTE = "accepted for the released command lines; no effect here"


def add_inert_options(group: argparse._ActionsContainer, options: Mapping[str, tuple[Any, str]]) -> None:
    """Options of the released scripts that change nothing here: ``{name: (default, why)}``.
    A bare ``--name`` (a released switch) or ``--name VALUE`` are both accepted."""
    for name, (default, why) in options.items():
        kind = str2bool if isinstance(default, bool) else type(default)
        group.add_argument(f"--{name}", type=kind, default=default, nargs="?", const=True if kind is str2bool else None,
                           metavar="VALUE", help=f"{INERT_NOTE} ({why})")


def inert_notes(args: argparse.Namespace, options: Mapping[str, tuple[Any, str]]) -> list[str]:
    """One note per inert option given a value other than its default."""
    return [f"note: --{name} {getattr(args, name)} has no effect here ({why})"
            for name, (default, why) in options.items() if getattr(args, name) != default]
