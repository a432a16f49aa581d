"""The PDF of the book (``make pdf``) against the HTML it was printed from.

Needs ``_build/html`` with ``nfcourse.pdf`` in it (``make html && make pdf``) and, for the
check of the checks, Debian's chromium; run by ``make pdf-check``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

import pdfcheck

ROOT = Path(__file__).resolve().parent.parent.parent
# tools/ is not a package: the printer (tools/pdf.py) and the toc (tools/check_html.py).
sys.path.insert(0, str(ROOT / "tools"))

import pdf  # noqa: E402
from check_html import toc_pages  # noqa: E402


@pytest.fixture(scope="session")
def book_pdf(built_html: Path) -> Path:
    printed = built_html / pdf.PDF_NAME
    if not printed.exists():
        pytest.fail(f"no {printed}: run `make pdf` first")
    return printed


def test_pdf_holds_the_book(built_html: Path, book_pdf: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """Every page of _toc.yml in order: its title, its math typeset, all its figures."""
    pages = toc_pages()
    macros = pdfcheck.tex_macros(ROOT / f"{page}.md" for page in pages)
    wanted = [pdfcheck.expected(built_html / f"{page}.html", page) for page in pages]
    report = pdfcheck.check_pdf(book_pdf, wanted, macros)
    with capsys.disabled():
        print(f"\n== {book_pdf}: {report.pages} PDF pages, {book_pdf.stat().st_size / 1e6:.1f} "
              f"MB, {sum(report.figures.values())} figures "
              f"({sum(w.figures for w in wanted)} printed by the HTML pages), "
              f"{len(macros)} TeX macros looked for")
    assert not report.problems, "\n".join(report.problems)


def test_landing_page_links_the_pdf(built_html: Path, book_pdf: Path) -> None:
    """A reader finds the PDF from the first page: a link that resolves to the built file."""
    landing = [built_html / "index.html", built_html / "intro.html"]
    targets = {(page.parent / href).resolve() for page in landing if page.exists()
               for href in re.findall(r'<a\b[^>]*\bhref="([^"#?]+)', page.read_text("utf-8"))
               if not re.match(r"^[a-z]+:", href)}
    assert book_pdf.resolve() in targets, \
        f"neither {' nor '.join(p.name for p in landing)} links to {book_pdf.name}"


# A page of the check's own making, printed by tools/pdf.py as the book's pages are: MathJax
# from the build, one figure, a title, and what the case under test breaks.
_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<script>window.MathJax = {{options: {{processHtmlClass: "math"}}}}</script>{mathjax}
<style>@media print {{ {print_css} }}</style></head>
<body class="tex2jax_ignore"><article><h1>{title}</h1>
<p>A ratio, <span class="math notranslate nohighlight">\\(\\frac{{a}}{{b}}\\)</span>, and code
that spells TeX on purpose: <code>label=r"$\\frac{{a}}{{b}}$"</code>.</p>
<img src="figure.png" alt="a figure"></article></body></html>
"""
_MATHJAX = '<script defer src="_static/mathjax/tex-chtml.js"></script>'
_SOURCE = """# A page

A ratio, $\\frac{a}{b}$, and code that spells TeX on purpose: `label=r"$\\sqrt{2}$"`.

```{code-cell} ipython3
print("\\n")
```
"""
# name -> (page's MathJax, its print CSS, what the check must report; None: nothing)
CASES: dict[str, tuple[str, str, str | None]] = {
    "good": (_MATHJAX, "", None),
    "no-mathjax": ("", "", "raw TeX '\\\\frac'"),
    "lost-figure": (_MATHJAX, "img { display: none; }", "0 figure(s) in the PDF, 1 printed"),
    "lost-title": (_MATHJAX, "h1 { display: none; }", "not in the text"),
}


def test_the_check_rejects_broken_prints(built_html: Path, tmp_path: Path) -> None:
    """Raw TeX, a lost figure, a lost title and wrong bookmarks are each reported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "_static").symlink_to(built_html / "_static")
    figure = min((built_html / "_images").glob("*.png"), key=lambda f: f.stat().st_size)
    shutil.copy(figure, site / "figure.png")
    for name, (mathjax, print_css, _) in CASES.items():
        (site / f"{name}.html").write_text(
            _PAGE.format(title=f"Case {name}", mathjax=mathjax, print_css=print_css))
    source = tmp_path / "page.md"
    source.write_text(_SOURCE)
    macros = pdfcheck.tex_macros([source])
    assert macros == {"frac"}, "only the math's macros, not the code's"

    printed = tmp_path / "cases.pdf"
    pdf.build(site, printed, list(CASES))
    wanted = [pdfcheck.expected(site / f"{name}.html", name) for name in CASES]
    problems = pdfcheck.check_pdf(printed, wanted, macros).problems
    for name, (_, _, complaint) in CASES.items():
        found = [p for p in problems if p.startswith(f"{name} ")]
        if complaint is None:
            assert not found, f"{name}: {found}"
        else:
            assert any(complaint in p for p in found), f"{name}: {found or 'nothing reported'}"

    shuffled = pdfcheck.check_pdf(printed, wanted[::-1], macros).problems
    assert len(shuffled) == 1 and "bookmarks" in shuffled[0], shuffled
