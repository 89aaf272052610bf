"""The project's layout: packages import only the floors below them, entry scripts stay thin,
and every document a file points at is in the repository."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FLOORS = {
    "utils": 0,
    "models": 1,
    "datasets": 2,
    "segmask": 3,
    "evaluation": 3,
    "training": 4,
    "benchmarks": 5,
}
"""Each package may import packages on lower floors (and itself), never one on its own floor or above."""

ENTRY_SCRIPTS = ("train_phase1.py", "train_phase2.py", "test.py", "predict.py")


def project_imports(path: Path) -> set[str]:
    """Top-level project packages a Python file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(FLOORS)


def package_files() -> list[tuple[str, Path]]:
    return [(package, path) for package in FLOORS for path in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("package, path", package_files(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_packages_import_only_lower_floors(package: str, path: Path) -> None:
    upward = {name for name in project_imports(path) if name != package and FLOORS[name] >= FLOORS[package]}
    assert not upward, f"{path.relative_to(ROOT)} ({package}, floor {FLOORS[package]}) imports {sorted(upward)}"


def test_the_layout_test_knows_every_package() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"}
    assert packages == set(FLOORS)


@pytest.mark.parametrize("script", [s for s in ENTRY_SCRIPTS if (ROOT / s).is_file()])
def test_entry_scripts_are_thin(script: str) -> None:
    code_lines = [line for line in (ROOT / script).read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    assert len(code_lines) <= 40, f"{script} holds {len(code_lines)} lines; its logic belongs in a package"
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    suffixes = {".py", ".md", ".sh", ".txt", ""}
    return [ROOT / name for name in listed
            if (ROOT / name).suffix in suffixes and (ROOT / name).is_file() and "fixtures" not in name]


def test_every_referenced_document_exists() -> None:
    """A markdown file named anywhere (``*.md``) must exist in the repository (relative to the file, to
    docs/ or to the root), so a clone never points at a document it lacks."""
    missing = []
    for path in tracked_text_files():
        for name in set(re.findall(r"[\w./-]*[A-Za-z_]\w*\.md\b", path.read_text(errors="replace"))):
            candidates = [path.parent / name, ROOT / name, ROOT / "docs" / Path(name).name]
            if not any(c.is_file() for c in candidates):
                missing.append(f"{path.relative_to(ROOT)} → {name}")
    assert not missing, "references to documents that are not in the repository:\n" + "\n".join(missing)


def test_readme_layout_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w.-]+/?)`", section, flags=re.MULTILINE))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    top = {name.split("/")[0] + ("/" if "/" in name else "") for name in tracked if not name.startswith(".")}
    top = {name for name in top if name.endswith("/") or name.endswith(".py")}
    assert listed == top, f"README lists {sorted(listed - top)} not in the tree; misses {sorted(top - listed)}"


def test_tests_mirror_the_packages() -> None:
    """Every test file sits in the folder of the package it tests, or with the cross-package ones
    (``reliability/``: each command's refusals and failures; ``workflows/``: whole pipelines)."""
    homes = set(FLOORS) | {"reliability", "workflows"}
    misplaced = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "tests").rglob("test_*.py"))
                 if path.parent.parent != ROOT / "tests" or path.parent.name not in homes]
    assert not misplaced, f"test files outside tests/<package>/, tests/reliability/ or tests/workflows/: {misplaced}"
