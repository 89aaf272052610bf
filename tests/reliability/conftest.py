"""Shared pieces of the bad-input and fault tests, one file per entry point in this folder.

Every case asserts three things: the exit code, the one ``error:`` line (or note) and that no
input and no earlier output changed (``Checksums``)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from reliability_commands import one_error_line

from datasets.synthetic import make_dataset
from segmask.segment import segment_split, superpixel_masks


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """Two training scenes with segment maps and one test scene, 48×64 (never modified: copy it)."""
    root = make_dataset(tmp_path_factory.mktemp("reliability") / "data", num_train=2, num_test=1, size=(48, 64),
                        seed=9)
    segment_split(root, "Training", lambda image: superpixel_masks(image, n_segments=8), min_area=10, progress=False)
    return root


@pytest.fixture
def dataset(small_dataset, tmp_path) -> Path:
    """A private copy of ``small_dataset`` that a test may break."""
    return Path(shutil.copytree(small_dataset, tmp_path / "data"))


class Checksums:
    """SHA-256 of every file under some folders or files, to assert that nothing changed."""

    def __init__(self, *roots: Path) -> None:
        self.roots = roots
        self.before = self.read()

    def read(self) -> dict[Path, str]:
        found: dict[Path, str] = {}
        for root in self.roots:
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for path in files:
                if ".cache" not in path.parts:  # the decoded-scene cache is ours to refresh
                    found[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return found

    def assert_unchanged(self) -> None:
        after = self.read()
        changed = sorted(str(p) for p in set(self.before) | set(after) if self.before.get(p) != after.get(p))
        assert not changed, f"changed, added or removed: {changed}"


@pytest.fixture
def checksums():
    """``checksums(path, ...)`` records the files now; ``.assert_unchanged()`` later."""
    return Checksums


@pytest.fixture
def error_line(capsys):
    """``error_line(*words)``: the single ``error:`` line on stderr (no traceback anywhere on
    stderr), checked to contain ``words`` (``reliability_commands.one_error_line``)."""
    return lambda *words: one_error_line(capsys, *words)


@pytest.fixture
def small_filesystem(tmp_path):
    """``small_filesystem(kib, read_only=False)``: a folder on a tmpfs of that size (a full disk
    for real, or a read-only one), unmounted afterwards; the test is skipped where mounting is
    not permitted (not root, no CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(kib: int, read_only: bool = False) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        options = f"size={kib}k" + (",ro" if read_only else "")
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
