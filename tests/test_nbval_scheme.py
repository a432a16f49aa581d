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
