"""Check a printed PDF of the book against the HTML it was printed from.

What each page of the book must show in the PDF is read from its built HTML (``expected``)
and from the MyST sources (``tex_macros``); ``check_pdf`` returns every difference, so the
run over the real book and the run over deliberately broken pages use the same code.

* Title: the text of the page's ``<h1>`` appears within the page's own part of the PDF (the
  PDF pages from its bookmark to the next), so every title is there, in the order of the toc.
* Raw TeX: a ``\\name`` of a macro the book's math uses, or ``$$``, ``\\(``, ``\\[``,
  ``\\begin{``, appears in the PDF's text no more often than in the printed text of the page
  outside its math (code cells, outputs and prose may spell TeX legitimately: a matplotlib
  label is TeX). Math that MathJax did not typeset shows its TeX and pushes a count over.
* Figures: the PDF's image objects on the page's PDF pages equal the page's ``<img>``
  elements inside ``<article>`` that print (not inside an element print leaves out). An image
  cut across two PDF pages would count twice, a lost one not at all; ``_static/print.css``
  keeps each image whole on one PDF page.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pypdfium2
from pypdf import PdfReader

# Delimiters of math that MathJax has not replaced (Sphinx writes $...$ as \(...\), $$...$$
# as \[...\]), and an environment left as text.
RAW_DELIMITERS = ("$$", "\\(", "\\[", "\\begin{")
# Classes of elements that print leaves out: the collapsed code cells (_static/print.css),
# the theme's own (``d-print-none``, ``noprint``, the "#" after a heading), and the controls
# of the animation player (its own @media print rule).
NOT_PRINTED = frozenset({"above-input", "d-print-none", "noprint", "headerlink",
                         "nf-animation-controls"})
# Elements whose content is never printed as text.
_NOT_TEXT = frozenset({"script", "style", "template"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "source", "track", "wbr"})


def tex_macros(sources: Iterable[Path]) -> set[str]:
    """The names of the TeX macros used in the math of MyST sources (``frac``, ``log``...)."""
    names: set[str] = set()
    for source in sources:
        text = source.read_text(encoding="utf-8")
        # Fenced blocks are code (``{code-cell}``, plain fences) unless they are {math}.
        text = re.sub(r"^(`{3,}|~{3,})(.*?)\n(.*?)^\1[ \t]*$",
                      lambda m: m[3] if m[2].strip().startswith("{math}") else "",
                      text, flags=re.M | re.S)
        # Inline code is not math either, unless it is the body of a {math} role.
        text = re.sub(r"(\{math\})?`([^`\n]*)`", lambda m: f"${m[2]}$" if m[1] else "", text)
        math = re.findall(r"\$\$(.+?)\$\$", text, flags=re.S)
        text = re.sub(r"\$\$(.+?)\$\$", "", text, flags=re.S)
        math += re.findall(r"\$(.+?)\$", text, flags=re.S)
        math += re.findall(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", text, flags=re.S)
        names.update(re.findall(r"\\([A-Za-z]+)", "\n".join(math)))
    return names


def raw_tex_patterns(macros: Iterable[str]) -> dict[str, re.Pattern[str]]:
    """What raw TeX looks like in extracted text: each macro as ``\\name``, and the delimiters."""
    patterns = {f"\\{name}": re.compile(rf"\\{name}(?![A-Za-z])") for name in sorted(macros)}
    patterns.update({d: re.compile(re.escape(d)) for d in RAW_DELIMITERS})
    return patterns


@dataclass
class Expected:
    """What one page of the book must show in the PDF, read from its built HTML."""

    page: str
    title: str = ""
    figures: int = 0
    # The printed text of the page outside its math (prose, code cells, outputs).
    text: str = ""


class _ArticleReader(HTMLParser):
    """Collects the title, the printed images and the printed non-math text of <article>."""

    def __init__(self, expected: Expected) -> None:
        super().__init__(convert_charrefs=True)
        self.expected = expected
        # One entry per open element: (tag, inside article, outside print, inside math, in h1).
        self.stack: list[tuple[str, bool, bool, bool, bool]] = [("", False, False, False, False)]
        self.title_done = False
        self.title: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        _, article, hidden, math, h1 = self.stack[-1]
        classes = set((dict(attrs).get("class") or "").split())
        article = article or tag == "article"
        hidden = hidden or bool(classes & NOT_PRINTED) or tag in _NOT_TEXT
        math = math or "math" in classes
        h1 = h1 or (tag == "h1" and article and not self.title_done)
        if tag == "img" and article and not hidden:
            self.expected.figures += 1
        if tag not in _VOID:
            self.stack.append((tag, article, hidden, math, h1))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):  # tolerate unclosed children
            if self.stack[depth][0] == tag:
                if tag == "h1" and self.stack[depth][4] and not self.stack[depth - 1][4]:
                    self.title_done = True
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        _, article, hidden, math, h1 = self.stack[-1]
        if h1 and not hidden:
            self.title.append(data)
        if article and not hidden and not math:
            self.text.append(data)


def expected(html_file: Path, page: str) -> Expected:
    """Title, printed figures and printed non-math text of one built page."""
    result = Expected(page)
    reader = _ArticleReader(result)
    reader.feed(html_file.read_text(encoding="utf-8"))
    result.title = " ".join("".join(reader.title).split())
    result.text = "".join(reader.text)
    return result


@dataclass
class PdfReport:
    """What the PDF holds, and what is wrong with it."""

    pages: int = 0
    figures: dict[str, int] = field(default_factory=dict)  # per page of the book
    problems: list[str] = field(default_factory=list)


def _normal(text: str) -> str:
    # pdfium reports a hyphen that ends a line as U+FFFE (it might be a soft hyphen), and
    # the PDF may hold ligature characters (U+FB02 for "fl"): undo both.
    return unicodedata.normalize("NFKC", text.replace("\ufffe", "-"))


def _squeeze(text: str) -> str:
    # Lines break where the PDF's do ("out-\r\ndistribution"): compare without whitespace.
    return re.sub(r"\s+", "", _normal(text))


def _parts(reader: PdfReader, wanted: Sequence[Expected]) -> list[tuple[int, int]] | str:
    """The PDF pages of each page of the book, from the bookmarks (or why they cannot be)."""
    marks = [(str(item.title), reader.get_destination_page_number(item))
             for item in reader.outline if not isinstance(item, list)]
    titles = [e.title for e in wanted]
    if [t for t, _ in marks] != titles:
        return f"bookmarks {[t for t, _ in marks]} are not the pages' titles {titles}"
    starts = [start for _, start in marks] + [len(reader.pages)]
    return list(zip(starts[:-1], starts[1:], strict=True))


def check_pdf(pdf: Path, wanted: Sequence[Expected], macros: Iterable[str]) -> PdfReport:
    """Compare ``pdf`` with the pages it should hold, in order (see the module docstring)."""
    report = PdfReport()
    parts = _parts(PdfReader(pdf), wanted)
    patterns = raw_tex_patterns(macros)
    with pypdfium2.PdfDocument(pdf) as document:
        report.pages = len(document)
        if isinstance(parts, str):
            report.problems.append(parts)
            return report
        for want, (first, end) in zip(wanted, parts, strict=True):
            text, figures = "", 0
            for index in range(first, end):
                sheet = document[index]
                text += sheet.get_textpage().get_text_range() + "\n"
                figures += sum(1 for _ in sheet.get_objects(
                    filter=[pypdfium2.raw.FPDF_PAGEOBJ_IMAGE]))
            report.figures[want.page] = figures
            where = f"{want.page} (PDF pages {first + 1}-{end})"
            if not want.title or _squeeze(want.title) not in _squeeze(text):
                report.problems.append(f"{where}: title {want.title!r} not in the text")
            if figures != want.figures:
                report.problems.append(f"{where}: {figures} figure(s) in the PDF, "
                                       f"{want.figures} printed by the HTML page")
            text = _normal(text)
            for token, pattern in patterns.items():
                extra = len(pattern.findall(text)) - len(pattern.findall(want.text))
                if extra > 0:
                    report.problems.append(f"{where}: raw TeX {token!r} {extra} time(s) more "
                                           "than the page's code and prose spell it")
    return report
