"""nbval as `make test` runs it really compares tagged outputs (a check that can fail)."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _notebook(path: Path, stored: str, tag: bool = True) -> None:
    cell = nbformat.v4.new_code_cell("print(6 * 7)", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored + "\n")]
    if tag:
        cell.metadata["tags"] = ["nbval-check-output"]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


def _nbval(path: Path) -> int:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval-lax",
           "--nbval-current-env", "--nbval-sanitize-with",
           str(ROOT / "tools" / "nbval_sanitize.cfg"), str(path)]
    return subprocess.run(cmd, cwd=path.parent, capture_output=True).returncode


@pytest.mark.slow
def test_tagged_stale_output_fails_and_current_output_passes(tmp_path: Path) -> None:
    _notebook(tmp_path / "stale.ipynb", "41")
    _notebook(tmp_path / "current.ipynb", "42")
    _notebook(tmp_path / "untagged.ipynb", "41", tag=False)
    assert _nbval(tmp_path / "stale.ipynb") != 0
    assert _nbval(tmp_path / "current.ipynb") == 0
    assert _nbval(tmp_path / "untagged.ipynb") == 0  # lax mode: untagged outputs are not compared


def _make_variable(name: str) -> list[str]:
    """The words of a ``NAME := ...`` assignment in the Makefile (with its continuations)."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith(f"{name} :="))
    return line.split(":=", 1)[1].split()


def test_chapters_run_side_by_side_only_if_they_use_one_thread() -> None:
    """`make notebooks` runs ONE_THREAD_CHAPTERS two at a time (one per core): each must set
    torch to one thread, and every chapter that does belongs in the list."""
    listed = {Path(p).stem for p in _make_variable("ONE_THREAD_CHAPTERS")}
    one_thread = {md.stem for md in (ROOT / "chapters").glob("*.md")
                  if "setup(seed=0, threads=1)" in md.read_text(encoding="utf-8")}
    assert listed, "no chapter runs side by side"
    assert all((ROOT / "chapters" / f"{stem}.ipynb").exists() for stem in listed)
    assert listed == one_thread
