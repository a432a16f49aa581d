"""The reader's other ways in, checked on paper: Binder (``binder/``) and Colab (README's cell).

Neither Binder nor Colab can be reached from CI, so these tests check what decides whether a
chapter runs there: that ``binder/`` follows repo2docker's rules and pins what the root
``requirements.txt`` pins, and that every module a chapter of ``_toc.yml`` (or the library it
calls) imports is installed by Binder, and by the one ``%pip install`` cell the README gives,
in Colab (next to what Colab preinstalls) and in a fresh environment.
(Installing from ``binder/requirements.txt`` into a clean venv was tried by hand; see the
report of issue 11.)
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from bookinfo import ROOT, book_config, notebook_pages

BINDER = ROOT / "binder"

# What a Colab runtime has without any pip install (the packages of Google's image that the
# chapters could use). Anything else a chapter imports must come from the README's cell.
COLAB_PREINSTALLED = {
    "torch", "numpy", "scipy", "matplotlib", "scikit-learn", "tqdm", "ipywidgets", "ipython",
    "ipykernel", "pandas", "pillow",
}

# What repo2docker's own environment gives every kernel (it runs the notebook server there).
REPO2DOCKER_BASE = {"ipython", "ipykernel", "jupyterlab", "notebook"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(line: str) -> str | None:
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    return _canonical(re.split(r"[\s\[<>=!~;@]", line, maxsplit=1)[0])


def _pins(path: os.PathLike[str] | str) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of a requirements file."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_canonical(name)] = version.strip()
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _package_dependencies() -> set[str]:
    return {n for d in _pyproject()["project"]["dependencies"] if (n := _requirement_name(d))}


def colab_cell() -> str:
    """The ``%pip install`` line the README tells Colab readers to add as a first cell."""
    lines = [line.strip() for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
             if line.strip().startswith("%pip install")]
    assert len(lines) == 1, f"README should give exactly one %pip install line, has {lines}"
    return lines[0]


def colab_cell_installs(cell: str) -> tuple[set[str], dict[str, str]]:
    """Distributions the cell installs (with the package's own dependencies) and its pins."""
    words = re.findall(r'"[^"]*"|\S+', cell)[2:]
    names, pins = set(), {}
    for word in (w.strip('"') for w in words):
        name = _requirement_name(word)
        if name is None:
            continue
        names.add(name)
        if "==" in word:
            pins[name] = word.split("==", 1)[1]
    if "nfcourse" in names:
        names |= _package_dependencies()
    return names, pins


def imported_modules(sources: list[str]) -> set[str]:
    """Top-level modules imported by these code cells (IPython magics ignored)."""
    modules: set[str] = set()
    for source in sources:
        code = "\n".join(line for line in source.splitlines()
                         if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


@functools.cache
def _providers() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def missing_distributions(modules: set[str], available: set[str]) -> list[str]:
    """Modules that are neither in the standard library nor provided by ``available``."""
    providers = _providers()
    missing = []
    for module in sorted(modules):
        if module in sys.stdlib_module_names or module == "nfcourse" and "nfcourse" in available:
            continue
        dists = {_canonical(d) for d in providers.get(module, [])}
        if not dists:
            missing.append(f"{module} (not installed here either)")
        elif not dists & available:
            missing.append(f"{module} (from {', '.join(sorted(dists))})")
    return missing


@functools.cache
def _dependencies(name: str) -> frozenset[str]:
    """``name`` and everything it pulls in, as installed here (same pins as the launch paths)."""
    seen, todo = set(), [name]
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_canonical(requirement.name))
    return frozenset(seen)


def with_dependencies(names: set[str]) -> set[str]:
    return set().union(*(_dependencies(n) for n in names))


LIBRARY = "src/nfcourse"  # checked like a chapter: its functions run in the chapters
# Only the performance appendix and chapter 10 (its comparison with zuko) import the peer
# libraries; they are installed on their own, without dependencies (requirements-peers.txt),
# by Binder's postBuild and a README cell.
PEERS_PAGES = ("chapters/10-autoregressive-and-spline-flows", "chapters/appendix-performance")
PEERS = ROOT / "requirements-peers.txt"


def peers_for(page: str) -> set[str]:
    return set(_pins(PEERS)) if page in PEERS_PAGES else set()


@functools.cache
def chapter_code(page: str) -> list[str]:
    """The code cells of a chapter's record, or every module of the library."""
    if page == LIBRARY:
        return [p.read_text(encoding="utf-8") for p in sorted((ROOT / page).rglob("*.py"))]
    nb = nbformat.read(ROOT / f"{page}.ipynb", as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


# --- Binder -------------------------------------------------------------------------------


def test_binder_follows_repo2docker_rules() -> None:
    # With a binder/ folder repo2docker reads only that folder, so everything is here.
    requirements = BINDER / "requirements.txt"
    assert requirements.is_file(), "binder/requirements.txt missing"
    # runtime.txt: "python-X.Y", a version the package supports and CI uses.
    runtime = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), f"runtime.txt: {runtime!r}"
    minimum = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, runtime[7:].split("."))) >= tuple(map(int, minimum.split("."))), \
        f"runtime.txt {runtime} is older than requires-python >={minimum}"
    # postBuild: an executable script that repo2docker runs after the installs.
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    assert post_build.read_text(encoding="utf-8").startswith("#!"), "postBuild needs a shebang"
    # A local reference makes repo2docker install requirements.txt from the repository root
    # after copying the repository in, so `-e .` installs this package.
    lines = [line.split("#", 1)[0].strip() for line in requirements.open(encoding="utf-8")]
    assert "-e ." in lines, "binder/requirements.txt must install the package (-e .)"


def test_binder_pins_what_the_course_pins() -> None:
    binder, root = _pins(BINDER / "requirements.txt"), _pins(ROOT / "requirements.txt")
    # The CPU build of the course's torch (a local version label, e.g. 2.13.0+cpu).
    assert binder.get("torch", "").split("+")[0] == root["torch"], \
        f"binder torch {binder.get('torch')} is not the CPU build of torch=={root['torch']}"
    assert binder["torch"].endswith("+cpu"), "Binder has no GPU: pin the +cpu build of torch"
    differ = {n: (v, root[n]) for n, v in binder.items() if n != "torch" and root.get(n) != v}
    assert not differ, f"binder/requirements.txt pins differ from requirements.txt: {differ}"
    # Every runtime dependency of the package, and what opens the .md sources, is pinned.
    needed = _package_dependencies() | {"jupytext", "myst-nb", "ipywidgets"}
    assert not needed - set(binder), f"not pinned in binder/requirements.txt: {needed - set(binder)}"
    assert "set-default-viewer" in (BINDER / "postBuild").read_text(encoding="utf-8"), \
        "postBuild should make jupytext the viewer of the MyST sources"


@pytest.mark.parametrize("page", [*notebook_pages(), LIBRARY])
def test_binder_installs_what_the_chapter_imports(page: str) -> None:
    installed = with_dependencies(set(_pins(BINDER / "requirements.txt")) | {"nfcourse"}
                                  | _package_dependencies()) | peers_for(page)
    missing = missing_distributions(imported_modules(chapter_code(page)),
                                    installed | REPO2DOCKER_BASE)
    assert not missing, f"{page} imports what binder/requirements.txt does not install: {missing}"


# --- Colab and a fresh environment --------------------------------------------------------


def test_colab_cell_matches_the_course() -> None:
    cell = colab_cell()
    url = book_config()["repository"]["url"]
    assert f"nfcourse @ git+{url}" in cell, f"the cell should install the package from {url}"
    _, pins = colab_cell_installs(cell)
    root = _pins(ROOT / "requirements.txt")
    differ = {n: (v, root.get(n)) for n, v in pins.items() if root.get(n) != v}
    assert not differ, f"the README's pip line pins differ from requirements.txt: {differ}"


@pytest.mark.parametrize("where", ["Colab", "a fresh environment"])
@pytest.mark.parametrize("page", [*notebook_pages(), LIBRARY])
def test_colab_cell_installs_what_the_chapter_imports(page: str, where: str) -> None:
    installs, _ = colab_cell_installs(colab_cell())
    available = with_dependencies(installs) | peers_for(page)
    if where == "Colab":
        available |= COLAB_PREINSTALLED
    missing = missing_distributions(imported_modules(chapter_code(page)),
                                    available)
    assert not missing, (f"{page} imports what the README's %pip cell does not install in "
                         f"{where}: {missing}")


def test_the_peer_libraries_are_installed_for_the_appendix() -> None:
    """Binder's postBuild installs requirements-peers.txt, and the README spells out its pins."""
    assert "-r requirements-peers.txt" in (BINDER / "postBuild").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, version in _pins(PEERS).items():
        assert f"{name}=={version}" in readme, f"README's appendix cell lacks {name}=={version}"


def test_a_missing_dependency_is_reported() -> None:
    """The control: a chapter importing something nobody installs is caught."""
    installs, _ = colab_cell_installs(colab_cell())
    modules = imported_modules(["import math\nimport torch\nfrom myst_nb import glue\n"
                                "import jupytext\n%matplotlib inline"])
    assert modules == {"math", "torch", "myst_nb", "jupytext"}
    assert missing_distributions(modules, with_dependencies(installs) | COLAB_PREINSTALLED) == \
        ["jupytext (from jupytext)"]
