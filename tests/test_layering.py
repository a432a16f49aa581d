"""The library's import layers: a module may import only its own layer or those below it.

core <- nn, data, metrics, ode, profiles <- flows <- vae <- models <- training <- matching,
jko <- cli, __main__ <- book. The top-level ``nfcourse/__init__`` gathers the public API and
may import anything below ``book``; nothing in the library may import ``nfcourse.book``.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nfcourse"

LAYERS = {"core": 0, "nn": 1, "data": 1, "metrics": 1, "ode": 1, "profiles": 1, "flows": 2,
          "vae": 3, "models": 4, "training": 5, "matching": 6, "jko": 6, "vi": 6, "cli": 7,
          "__main__": 7, "book": 8}
# The package itself re-exports everything but the book, so importing it from inside the
# library pulls in every layer: only cli, __main__ and book may.
TOP = 7


def _part(module: str) -> str | None:
    """The top-level part of ``nfcourse.<part>...``; None for ``nfcourse`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_of(module: str) -> int:
    part = _part(module)
    if part is None:
        return TOP
    if part not in LAYERS:
        raise KeyError(f"{module}: nfcourse.{part} has no layer; add it to LAYERS in "
                       "tests/test_layering.py.")
    return LAYERS[part]


def _imports(module: str, source: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, imported nfcourse module)`` for every import of the library in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.split(".")[0] == "nfcourse"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                base = ".".join(package[:len(package) - node.level + 1] +
                                ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "nfcourse":
                continue
            if base == "nfcourse":  # `from nfcourse import x`: x may be a subpackage
                found += [(node.lineno, f"nfcourse.{a.name}" if a.name in LAYERS else base)
                          for a in node.names]
            else:
                found.append((node.lineno, base))
    return found


def layer_violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import in ``source`` (the text of ``module``) that breaks the layering."""
    own = layer_of(module)
    if module == "nfcourse":
        own = LAYERS["book"] - 1  # the public API: anything below the book
    bad = []
    for line, target in _imports(module, source, is_package):
        if _part(target) == "book" and _part(module) != "book":
            bad.append(f"{module}:{line} imports {target} (nothing in the library may import "
                       "nfcourse.book)")
        elif layer_of(target) > own:
            bad.append(f"{module}:{line} imports {target} (layer {layer_of(target)} > "
                       f"{own})")
    return bad


def _modules() -> list[tuple[str, Path]]:
    mods = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        mods.append((".".join(parts), path))
    return mods


def test_every_module_respects_the_layers() -> None:
    bad = []
    for module, path in _modules():
        bad += layer_violations(module, path.read_text(), path.name == "__init__.py")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_every_module_has_a_layer() -> None:
    for module, _ in _modules():
        layer_of(module)  # raises KeyError naming the module


@pytest.mark.parametrize("module, source, is_package, expected", [
    ("nfcourse.core.flow", "from nfcourse.flows.coupling import AffineCoupling", False,
     ["nfcourse.core.flow:1 imports nfcourse.flows.coupling (layer 2 > 0)"]),
    ("nfcourse.data.toy2d", "def f():\n    import nfcourse.book.plots", False,
     ["nfcourse.data.toy2d:2 imports nfcourse.book.plots (nothing in the library may import "
      "nfcourse.book)"]),
    ("nfcourse.ode.solvers", "from ..training import fit", False,
     ["nfcourse.ode.solvers:1 imports nfcourse.training (layer 5 > 1)"]),
    ("nfcourse.metrics", "from . import stats\nfrom nfcourse import vae", True,
     ["nfcourse.metrics:2 imports nfcourse.vae (layer 3 > 1)"]),
    ("nfcourse.flows.glow", "from nfcourse import Flow", False,
     ["nfcourse.flows.glow:1 imports nfcourse (layer 7 > 2)"]),
    ("nfcourse", "from nfcourse.book import setup", True,
     ["nfcourse:1 imports nfcourse.book (nothing in the library may import nfcourse.book)"]),
])
def test_checker_catches_planted_violations(module: str, source: str, is_package: bool,
                                            expected: list[str]) -> None:
    assert layer_violations(module, source, is_package) == expected


@pytest.mark.parametrize("module, source", [
    ("nfcourse.flows.glow", "from nfcourse.core.flow import Flow\nimport torch"),
    ("nfcourse.data.digits", "from nfcourse.metrics.stats import mean_se"),  # same layer
    ("nfcourse", "from nfcourse.training import fit"),
    ("nfcourse.book.plots", "import nfcourse as nf\nfrom nfcourse.book import setup"),
])
def test_checker_allows_imports_downwards(module: str, source: str) -> None:
    assert layer_violations(module, source, module == "nfcourse") == []
