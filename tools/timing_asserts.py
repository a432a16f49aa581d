"""Find checks on wall time in a chapter's code: they fail on a busy machine, not on a bug.

    python tools/timing_asserts.py chapters/*.md     # prints each offence; exit 1 if any

A chapter measures and reports its timings; it never asserts on them (speed claims belong in
the performance appendix's harness, as ratios measured in one run, and are reported there as
computed verdicts). This is a static check over a chapter's code cells, in order:

* a name is *timed* when it is assigned from an expression that reads a clock
  (``time.perf_counter()``, ``time.time()``, ``time.process_time()``, ``time.thread_time()``,
  ``time.monotonic()``, their ``_ns`` forms, or the benchmark harness: ``alternate``,
  ``ratio``, ``timeit``), or by arithmetic on timed names (``ms = 1000 * seconds / n``), or
  when its name says it holds a duration (``seconds``, ``elapsed``, ``…_ms``, ``ms_per…``,
  ``wall``, ...);
* a container is timed when an item is set to a clock reading directly
  (``seconds[name] = time.perf_counter() - start``), not when a tuple merely includes one;
* an ``assert`` statement, or a ``check(...)``/``check_close(...)`` call, that reads a timed
  name is an offence.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

_CLOCKS = {"perf_counter", "perf_counter_ns", "time", "time_ns", "process_time",
           "process_time_ns", "thread_time", "thread_time_ns", "monotonic", "monotonic_ns",
           "alternate", "ratio", "timeit", "default_timer"}
_DURATION_NAME = re.compile(r"(^|_)(seconds|secs|elapsed|wall|duration|timings?)($|_)|"
                            r"(^|_)(ms|us|cpu_s|wall_s)$|ms_per|per_second|_clock$")
_CHECKS = {"check", "check_close"}


@dataclass(frozen=True)
class Offence:
    cell: int
    line: int
    names: tuple[str, ...]
    source: str

    def __str__(self) -> str:
        return (f"cell {self.cell}, line {self.line}: asserts on timed value(s) "
                f"{', '.join(self.names)}: {self.source}")


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _reads_clock(node: ast.AST, clocks: set[str] = _CLOCKS) -> bool:
    return any(isinstance(sub, ast.Call) and _callee(sub) in clocks for sub in ast.walk(node))


def _chapter_clocks(trees: list[ast.AST]) -> set[str]:
    """The clocks plus the chapter's own functions that read one (``median_seconds``), to a
    fixed point (a helper that calls such a helper is one too)."""
    functions = {f.name: f for tree in trees for f in ast.walk(tree)
                 if isinstance(f, ast.FunctionDef)}
    clocks = set(_CLOCKS)
    while True:
        more = {name for name, f in functions.items() if name not in clocks
                and (_reads_clock(f, clocks) or _DURATION_NAME.search(name))}
        if not more:
            return clocks
        clocks |= more


def _arithmetic(node: ast.AST) -> bool:
    """Whether ``node`` only computes with its operands (so a timed operand gives a timed
    result); a call, a tuple or a comprehension may pick out something else entirely."""
    allowed = (ast.BinOp, ast.UnaryOp, ast.Name, ast.Subscript, ast.Attribute, ast.Constant,
               ast.Load, ast.operator, ast.unaryop, ast.Slice)
    return all(isinstance(sub, allowed) for sub in ast.walk(node))


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _targets(target: ast.AST) -> tuple[set[str], set[str]]:
    """(plain names, containers set by item) assigned by one assignment target."""
    plain, items = set(), set()
    for sub in ast.walk(target):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            plain.add(sub.id)
        elif isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name):
            items.add(sub.value.id)
    return plain, items


def offences(cells: list[str]) -> list[Offence]:
    """The timing asserts in a chapter whose code cells are ``cells`` (in order)."""
    timed: set[str] = set()
    found: list[Offence] = []
    trees: list[ast.AST | None] = []
    for code in cells:
        try:
            trees.append(ast.parse("\n".join(line for line in code.splitlines()
                                             if not line.lstrip().startswith(("%", "!")))))
        except SyntaxError:
            trees.append(None)
    clocks = _chapter_clocks([t for t in trees if t is not None])
    helpers = {f.name for t in trees if t is not None for f in ast.walk(t)
               if isinstance(f, ast.FunctionDef)}
    for index, (code, tree) in enumerate(zip(cells, trees)):
        if tree is None:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"append", "extend", "add", "update"}
                    and any(_reads_clock(a, clocks) for a in node.args)):
                base = node.func.value  # cost["dense"].append(median_seconds(f))
                while isinstance(base, (ast.Subscript, ast.Attribute)):
                    base = base.value
                if isinstance(base, ast.Name):
                    timed.add(base.id)
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                clock = _reads_clock(node.value, clocks)
                # arithmetic on timings, or the chapter's own helper applied to them
                from_timed = bool(_names(node.value) & timed) and (
                    _arithmetic(node.value) or (isinstance(node.value, ast.Call)
                                                and _callee(node.value) in helpers))
                direct = clock or (isinstance(node.value, ast.Name) and node.value.id in timed)
                for target in targets:
                    plain, items = _targets(target)
                    for name in plain:
                        if clock or from_timed or _DURATION_NAME.search(name):
                            timed.add(name)
                    if direct:
                        timed |= items
        for node in ast.walk(tree):
            test = None
            if isinstance(node, ast.Assert):
                test = node.test
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in _CHECKS):
                test = node
            if test is None:
                continue
            names = {n for n in _names(test) if n in timed or _DURATION_NAME.search(n)}
            if names:
                found.append(Offence(index, node.lineno, tuple(sorted(names)),
                                     ast.get_source_segment(code, node) or ast.unparse(node)))
    return found


def chapter_offences(md: Path) -> list[Offence]:
    import jupytext

    nb = jupytext.read(md)
    return offences([c.source for c in nb.cells if c.cell_type == "code"])


def main(argv: list[str]) -> int:
    bad = 0
    for path in map(Path, argv):
        for offence in chapter_offences(path):
            print(f"TIMING ASSERT {path}: {offence}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
