"""`make standalone` installs what the README tells a reader to install, nothing else."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("standalone", ROOT / "tools" / "standalone.py")
standalone = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standalone)  # type: ignore[union-attr]


def test_the_install_lines_come_from_the_readme_with_this_checkout_for_the_package() -> None:
    main, peers = standalone.install_lines()
    assert str(ROOT) in main and not any("git+" in a for a in main)
    assert {"myst-nb==1.4.0", "torchdiffeq==0.2.5", "ipywidgets"} <= set(main)
    assert peers[0] == "--no-deps" and any(p.startswith("zuko==") for p in peers)
    pins = {line.split("#")[0].strip() for line in
            (ROOT / "requirements-peers.txt").read_text().splitlines()} - {""}
    assert pins <= set(peers), "README's peers line and requirements-peers.txt disagree"


def test_a_readme_without_the_lines_is_an_error_that_says_so(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# nothing to install\n")
    with pytest.raises(SystemExit, match="Colab install line"):
        standalone.install_lines(readme)


def test_a_failing_chapter_is_reported(tmp_path: Path, monkeypatch) -> None:
    # The runner must turn a cell error into a failure, not a pass: a tiny notebook, run by
    # this interpreter's kernel.
    import sys

    import nbformat

    monkeypatch.setattr(standalone, "WORK", tmp_path)
    monkeypatch.setattr(standalone, "KERNEL", "python3")
    for code, want in (("1 + 1", True), ("assert False, 'broken'", False)):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        rec = tmp_path / "99-x.ipynb"
        nbformat.write(nb, rec)
        ok, _, tail = standalone.run_alone(Path(sys.executable), rec)
        assert ok is want, tail
