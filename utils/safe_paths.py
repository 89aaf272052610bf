"""The two rules every writer of the project follows, whatever the options say:

1. it never writes over a file it reads, or over a file a scene consists of (its LDRs, its label,
   its exposure file): a target that is the same file as an input is refused;
2. it never writes outside the folder it was given: names that come from the user or from files
   become plain file names inside that folder, or are refused.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from .cli import UsageError


class OverwriteError(UsageError):
    """A command was asked to write over one of its own inputs."""


def _identities(path: Path) -> list[object]:
    """What makes two paths one file: the resolved path, and (device, inode) when it exists."""
    found: list[object] = []
    try:
        found.append(path.resolve())
    except (OSError, RuntimeError):  # a symlink loop resolves to nothing
        return found
    try:
        info = path.stat()
        found.append((info.st_dev, info.st_ino))
    except OSError:
        pass
    return found


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (the same resolved path, or the same inode)."""
    return bool(set(_identities(Path(a))) & set(_identities(Path(b))))


def refuse_overwriting(targets: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike],
                       how: str = "") -> None:
    """Raise OverwriteError when a file about to be written is one of ``inputs`` (the same
    resolved path, or the same inode: symbolic and hard links count).

    ``how`` says which option chose the target (e.g. ``"--masks_file masks.npy"``), so the user
    sees what to change."""
    sources: dict[object, Path] = {}
    for source in map(Path, inputs):
        for identity in _identities(source):
            sources.setdefault(identity, source)
    for target in map(Path, targets):
        hit = next((sources[i] for i in _identities(target) if i in sources), None)
        if hit is not None:
            chosen = f" (chosen by {how})" if how else ""
            raise OverwriteError(f"refusing to write {target}{chosen}: it is {hit}, an input of this command; "
                                 "choose another output")


def check_writable_folder(folder: str | os.PathLike, option: str) -> None:
    """Make sure ``folder`` can be written (or created), without writing anything: a run whose
    outputs cannot be written stops before its first output, with the option named."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder}: exists and is not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {folder}: {existing} is a file, so the folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_mount(existing) else "permission denied"
        raise UsageError(f"{option} {folder}: cannot write there ({why}: {existing})")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def broken_link(path: str | os.PathLike) -> str | None:
    """Why ``path`` is a symbolic link that leads nowhere ("a symbolic link loop", "a symbolic
    link to nothing"), or None: such entries are named to the user, never skipped silently."""
    path = Path(path)
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "a symbolic link loop"
    except OSError as err:
        return "a symbolic link loop" if err.errno == errno.ELOOP else "a symbolic link to nothing"
    return None


def file_name_in(folder: str | os.PathLike, name: str, option: str) -> Path:
    """``folder / name`` for a name given by the user or taken from a file, refused unless it is a
    plain file name that stays inside ``folder`` (no separators, no ``..``, not empty)."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or name != name.strip() or Path(name).is_absolute())
    if bad:
        raise UsageError(f"{option} {name!r}: not a plain file name; outputs are written inside "
                         f"{folder}, so give a name without folders, '..' or leading/trailing spaces")
    return Path(folder) / name
