"""Small pieces every command line of the project shares: boolean flags, device options and the
exit-code contract.

Exit codes:

- 0 (``EXIT_OK``): done;
- 1 (``EXIT_FAILED_CHECKPOINT``): a checkpoint failed, or a run could not go on (training that
  diverged, a full disk);
- 2 (``EXIT_USAGE``): unusable options or input, or an output folder in use by another run;
- 75 (``EXIT_PREEMPTED``, EX_TEMPFAIL of sysexits.h): training stopped on SIGTERM or SIGUSR1
  (a cluster scheduler's warning before it ends a job) after writing a checkpoint of its last
  step; the same command continues the run from that step;
- 130: interrupted with Ctrl-C.
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Any, Callable, Mapping

EXIT_OK = 0
EXIT_FAILED_CHECKPOINT = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75
AMP_CHOICES = ("none", "bf16", "fp16")


BUG_REPORT = ("this is a bug of the project, not a mistake of yours: please report it with the traceback "
              "below and the command line")


class UsageError(ValueError):
    """Options or inputs that cannot be used; reported in one line, without a traceback. Every
    error caused by the user's input or options derives from it (scenes, brackets, checkpoints,
    tensor files, devices ...); any other exception is a bug and keeps its traceback."""

    exit_code = EXIT_USAGE


class RunFailed(RuntimeError):
    """A run that cannot go on (training that diverged, a full disk); reported in one line."""

    exit_code = EXIT_FAILED_CHECKPOINT


class Preempted(Exception):
    """Training stopped by a preemption signal after writing a resumable checkpoint; reported
    in one line (its message), exit ``EXIT_PREEMPTED``."""

    exit_code = EXIT_PREEMPTED


def describe_os_error(err: OSError) -> str:
    """One line for a failed file operation, naming the file."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on the device{where}: free some space and run again"
    return f"{err.strerror}{where}" if err.strerror else str(err)


def run_cli(body: Callable[[], int], debug: bool = False) -> int:
    """Run an entry point's body and turn the user's mistakes into one ``error:`` line and an exit
    code: unusable options or inputs (``UsageError`` and its kinds: scenes, checkpoints, ...) → 2,
    or the error's own ``exit_code`` (1 for a checkpoint that failed); a run that failed or a file
    operation that failed → 1 (2 for a missing file). Anything else is a bug of ours: it keeps its
    traceback, after a line asking to report it; ``debug`` keeps the traceback for everything."""
    try:
        return body()
    except Preempted as err:
        print(err, file=sys.stderr)
        return err.exit_code
    except (UsageError, RunFailed) as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if debug:
            raise
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        print(BUG_REPORT, file=sys.stderr)
        raise


class OptionsFileParser(argparse.ArgumentParser):
    """An argument parser that also reads options from files named ``@FILE`` on the command line:
    whitespace-separated options, several per line, ``#`` starting a comment; a file may name
    another ``@FILE``. A recipe is then written once and used by every command line that runs it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, fromfile_prefix_chars="@", **kwargs)

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return arg_line.split("#", 1)[0].split()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, unless its help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, False):
            return text
        return super()._get_help_string(action)


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the traceback of every error (for reporting a bug)."""
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  rules: Mapping[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Validate numeric options against their meaning at parse time: ``{name: (test, what)}``;
    a value failing ``test`` stops the parser with ``--name: got V, expected what`` (exit 2)."""
    for name, (test, what) in rules.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(_passes(test, v) for v in values):
            parser.error(f"--{name}: got {value}, expected {what}")


def _passes(test: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(test(value))
    except (TypeError, ValueError):
        return False


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


def add_device_options(group: argparse._ActionsContainer, device_help: str = "", amp: bool = True) -> None:
    """``--device``, ``--no_cuda`` and (with ``amp``) ``--amp``; the device is checked by
    ``utils.distributed.resolve_device`` inside the command (one ``error:`` line)."""
    group.add_argument("--device", default="auto",
                       help=device_help or "auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    if amp:
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
