"""One run per output folder: a lock file that a second run into the same folder finds and refuses.

The lock is ``<folder>/.lock`` (a hidden name: never taken for a checkpoint or an output). The
run holds an ``fcntl.flock`` on it for its whole life, so the system releases it however the
process ends (a crash, a kill); the file also holds JSON ``{host, pid, started, command}`` for the
refusal message. A lock file that nobody holds (its run ended without removing it) is taken over
with a note. On a filesystem without ``flock`` the JSON decides: a lock of a live process of this
host, or of another host, is in use; one of a process of this host that no longer runs is stale.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from .cli import UsageError

LOCK_NAME = ".lock"
"""The lock file's name inside the locked folder."""
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
"""``flock`` errors of filesystems that do not support it (some network filesystems)."""


class FolderInUse(UsageError):
    """Another live run holds the folder's lock."""


@dataclass
class RunLock:
    """A held lock: release it when the run ends. ``note`` says when a stale lock was taken over."""

    path: Path
    handle: IO[str] | None
    note: str | None = None
    created_folder: bool = False

    def release(self) -> None:
        """Remove the lock file and let it go (idempotent). A folder that the lock created and
        that the run left empty is removed too."""
        if self.handle is None:
            return
        try:
            if _same_file(self.handle, self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            self.handle.close()
            self.handle = None
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only when empty


def _this_record() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(sys.argv)}


def _read_record(handle: IO[str]) -> dict[str, Any]:
    """The holder's JSON record ({} when the file is empty or unreadable)."""
    try:
        handle.seek(0)
        record = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _same_file(handle: IO[str], path: Path) -> bool:
    """Whether ``path`` still names the open file (a run that ended may have removed it)."""
    try:
        opened, named = os.fstat(handle.fileno()), path.stat()
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _holder(record: dict[str, Any]) -> str:
    if not record.get("pid"):
        return "another run"
    return f"PID {record['pid']} on {record.get('host', '?')} since {record.get('started', '?')}"


def _in_use(folder: Path, option: str, path: Path, record: dict[str, Any]) -> FolderInUse:
    return FolderInUse(f"{option} {folder} is in use by {_holder(record)} (lock file {path}); wait for that run "
                       f"to end or choose another {option}")


def _lives_elsewhere(record: dict[str, Any]) -> bool:
    """Without flock: whether the record's process may still run (another host: cannot tell)."""
    if not record.get("pid"):
        return False
    if record.get("host") != socket.gethostname():
        return True
    return int(record["pid"]) != os.getpid() and _process_alive(int(record["pid"]))


def _try_lock(path: Path) -> tuple[IO[str], bool]:
    """Open ``path`` and take its flock without waiting; returns (handle, whether flock works).
    Raises BlockingIOError (closing the file) when another process holds it."""
    handle = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise
    except OSError as err:
        if err.errno not in NO_FLOCK:
            handle.close()
            raise
        return handle, False
    return handle, True


def acquire_run_lock(folder: str | os.PathLike, option: str = "--logdir") -> RunLock:
    """Take ``folder``'s lock (creating the folder), or raise FolderInUse (a UsageError naming
    the holder) when a live run holds it. Nothing but the lock file is written."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    for _ in range(10):  # a holder that ends meanwhile removes the file we opened: open it again
        try:
            handle, flocked = _try_lock(path)
        except BlockingIOError:
            with contextlib.suppress(OSError), open(path, encoding="utf-8") as peek:
                raise _in_use(folder, option, path, _read_record(peek)) from None
            raise _in_use(folder, option, path, {}) from None
        if _same_file(handle, path):
            break
        handle.close()
    else:
        raise _in_use(folder, option, path, {})
    previous = _read_record(handle)
    if not flocked and _lives_elsewhere(previous):
        handle.close()
        raise _in_use(folder, option, path, previous)
    note = None
    if previous.get("pid"):
        note = (f"note: {option} {folder}: took over the lock file {path} of PID {previous['pid']} on "
                f"{previous.get('host', '?')} (started {previous.get('started', '?')}), a run that ended "
                "without removing it")
    try:
        handle.seek(0)
        handle.truncate()
        json.dump(_this_record(), handle)
        handle.flush()
    except OSError as err:  # a full disk: name the file
        handle.close()
        path.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    return RunLock(path, handle, note, created)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, option: str = "--logdir") -> Iterator[RunLock]:
    """``with run_lock(folder, "--save_dir") as lock:`` hold ``folder``'s lock for the block
    (see ``acquire_run_lock``); ``lock.note`` is the note to show when a stale lock was taken over."""
    lock = acquire_run_lock(folder, option)
    try:
        yield lock
    finally:
        lock.release()
