"""Run chapter records the way a reader who downloads one does: alone, in a fresh environment.

    python tools/standalone.py [--reuse] [CHAPTER ...]     # all chapters if none are named

A reader who presses a chapter's download (or Colab) button gets its ``.ipynb`` and nothing
else: no clone, no other chapter, no ``.venv``. The README tells them what to install, in one
line (and, for the performance appendix, a second one). This tool does exactly that:

1. a fresh virtual environment in ``_build/standalone/venv`` (``--reuse`` keeps an existing
   one, for quick iterations), into which it installs the README's install line with this
   checkout in place of the git URL, plus what a notebook host such as Colab already has: a
   Jupyter kernel and ``torch==2.13.0`` (the pin the README says reproduces the book);
2. for each chapter, the executed record copied alone into an empty folder, executed there top
   to bottom by that environment's kernel, with no network and none of the book's tools.

The install lines are read from README.md, so the README cannot drift from what is tested. The
only environment passed through is the profile and ``NFCOURSE_MNIST_DIR`` (the data a reader
downloads on first use; this machine has no network). A chapter passes when every cell runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "_build" / "standalone"
KERNEL = "nfcourse-standalone"
#: What a notebook host provides before the reader's first cell runs.
HOST = ["torch==2.13.0", "ipykernel", "nbclient"]

_RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
client = NotebookClient(nb, timeout=1800, kernel_name=sys.argv[2],
                        resources={"metadata": {"path": sys.argv[3]}})
try:
    client.execute()
except CellExecutionError as err:
    print(str(err)[-3000:])
    sys.exit(1)
finally:
    nbformat.write(nb, path)
"""


def install_lines(readme: Path = ROOT / "README.md") -> tuple[list[str], list[str]]:
    """The README's Colab install line and its peer-libraries line, as pip arguments, with the
    git URL of the package replaced by this checkout."""
    text = readme.read_text(encoding="utf-8")
    main = re.search(r"^\s*%pip install (.+)$", text, re.MULTILINE)
    peers = re.search(r"`!pip install (--no-deps[^`]+)`", text.replace("\n", " "))
    if not main or not peers:
        raise SystemExit("README.md: the Colab install line (`%pip install ...`) or the peers "
                         "line (`!pip install --no-deps ...`) was not found")
    args = [str(ROOT) if a.startswith("nfcourse @") else a for a in shlex.split(main.group(1))]
    if str(ROOT) not in args:
        raise SystemExit("README.md: the Colab line does not install the nfcourse package")
    return args, shlex.split(re.sub(r"\s+", " ", peers.group(1)))


def build_env(reuse: bool) -> Path:
    """The fresh environment; returns its Python."""
    env_dir = WORK / "venv"
    python = env_dir / "bin" / "python"
    if reuse and python.exists():
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    main, peers = install_lines()
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    for args in (HOST, main, peers):
        print("   pip install " + " ".join(args), flush=True)
        done = subprocess.run(pip + args, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"pip failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    subprocess.run([str(python), "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL],
                   check=True, stdout=subprocess.DEVNULL)
    return python


def run_alone(python: Path, record: Path) -> tuple[bool, float, str]:
    """Execute ``record`` alone in an empty folder; (passed, seconds, error tail)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{record.stem}-", dir=WORK))
    copy = folder / record.name
    shutil.copy(record, copy)
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
           "JUPYTER_PATH": str(python.parent.parent / "share" / "jupyter"),
           "NFCOURSE_PROFILE": os.environ.get("NFCOURSE_PROFILE", "ci")}
    if os.environ.get("NFCOURSE_MNIST_DIR"):
        env["NFCOURSE_MNIST_DIR"] = os.environ["NFCOURSE_MNIST_DIR"]
    start = time.perf_counter()
    done = subprocess.run([str(python), "-c", _RUNNER, str(copy), KERNEL, str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return done.returncode == 0, seconds, (done.stdout + done.stderr)[-3000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep an existing environment")
    parser.add_argument("chapters", nargs="*", help="chapter names or number prefixes")
    args = parser.parse_args(argv)
    records = sorted((ROOT / "chapters").glob("*.ipynb"))
    if args.chapters:
        records = [r for r in records if any(r.stem.startswith(c) for c in args.chapters)]
        if not records:
            raise SystemExit(f"no chapter record matches {args.chapters}")
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print("== standalone: building a fresh environment from the README's install lines",
          flush=True)
    python = build_env(args.reuse)
    print(f"   environment ready in {time.perf_counter() - start:.0f} s", flush=True)
    failed = []
    for record in records:
        ok, seconds, tail = run_alone(python, record)
        print(f"   {'ok  ' if ok else 'FAIL'} {record.name} alone in an empty folder: "
              f"{seconds:.0f} s", flush=True)
        if not ok:
            failed.append(record.name)
            print(tail, flush=True)
    total = time.perf_counter() - start
    print(f"== standalone: {len(records) - len(failed)} passed, {len(failed)} failed "
          f"({total:.0f} s in all)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
