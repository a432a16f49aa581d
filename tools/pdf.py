"""Print the built book to one PDF, every page of ``_toc.yml`` in order (``make pdf``).

    python tools/pdf.py [_build/html] [--png _build/screenshots/pdf-page-1.png]

Each page is opened from a local server in the headless chromium of the browser check
(``tests/browser/pagecheck.py``) and printed by chromium itself (``Page.printToPDF``) once
MathJax has typeset it and every image has loaded, with every dropdown of the article open:
exercise answers are part of the book. ``_static/print.css`` shapes the printed page: no
sidebars or buttons (the theme's own print rules), no figure cut in two, code wrapped, and
the collapsed code cells (``hide-input``: the checks and the set-up) left out, since paper
cannot expand them. The pages are joined in order into ``_build/html/nfcourse.pdf`` with one
bookmark per page, titled with its ``<h1>``; links from one page of the book to another
become links inside the PDF. ``tests/pdf`` checks the result against the HTML.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pypdfium2
from pypdf import PdfReader, PdfWriter
from pypdf.generic import ArrayObject, NameObject
from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parent.parent
# The browser check's chromium set-up, local server and MathJax wait, rather than a copy of
# them. tools/ is on sys.path when this file runs as a script; tests/browser is not.
sys.path.insert(0, str(ROOT / "tests" / "browser"))
import pagecheck  # noqa: E402
from check_html import toc_pages  # noqa: E402

PDF_NAME = "nfcourse.pdf"
# A4, in chromium's unit (inches). At 85 % the body text is about 10 pt, a book's size, and
# the book takes a quarter fewer pages than at 100 %.
PRINT_OPTIONS = {
    "paperWidth": 8.27, "paperHeight": 11.69,
    "marginTop": 0.6, "marginBottom": 0.6, "marginLeft": 0.6, "marginRight": 0.6,
    "scale": 0.85,
    "printBackground": True,  # code cells and admonitions keep their shading
}
PNG_DPI = 110

# Make the page what paper needs, and return its title. Light mode whatever the system
# prefers (a dark page would print white on black); every dropdown of the article open
# (print.css leaves the collapsed code cells out, open or not).
_PREPARE = """
document.documentElement.dataset.theme = "light";
document.documentElement.dataset.mode = "light";
document.querySelectorAll("article details").forEach(d => { d.open = true; });
const h1 = document.querySelector("article h1");
if (!h1) return "";
const title = h1.cloneNode(true);
title.querySelectorAll(".headerlink").forEach(a => a.remove());
return title.textContent.trim();
"""


@dataclass(frozen=True)
class Printed:
    """One page of the book, printed alone."""

    page: str  # as in _toc.yml, e.g. "chapters/01-change-of-variables"
    title: str  # the text of its <h1>
    pdf: bytes


def print_page(driver: WebDriver, url: str, page: str) -> Printed:
    """Open ``url``, wait until its math and images are complete, open it up and print it."""
    pagecheck.open_page(driver, url)
    state = pagecheck.mathjax_state(driver)
    if state not in ("typeset", "absent"):
        raise RuntimeError(f"{page}: MathJax {state}; its math would print as raw TeX")
    # Makes lazy images eager (they would print as empty boxes) and waits for every one.
    broken = pagecheck.image_problems(driver)
    if broken:
        raise RuntimeError(f"{page}: {'; '.join(broken)}")
    title = str(driver.execute_script(_PREPARE))
    data = driver.execute_cdp_cmd("Page.printToPDF", PRINT_OPTIONS)["data"]
    return Printed(page, title, base64.b64decode(data))


def _relink(writer: PdfWriter, base_url: str, first_pdf_page: dict[str, int]) -> None:
    """Point links to pages of the book (URLs of the local server) inside the PDF.

    A link to a page lands on that page's first PDF page (its anchor is lost); a link to
    anything else of the build (a download, the index, this PDF) is removed. Left as they
    are, both would lead to a server that is gone.
    """
    for sheet in writer.pages:
        if "/Annots" not in sheet:
            continue
        kept = ArrayObject()
        for ref in sheet["/Annots"].get_object():
            annot = ref.get_object()
            action = annot.get("/A")
            uri = str(action.get_object().get("/URI", "")) if action is not None else ""
            if not uri.startswith(base_url):
                kept.append(ref)  # a link inside the page, or out to the web
                continue
            target = uri[len(base_url):].split("#")[0].removesuffix(".html")
            if target in first_pdf_page:
                del annot[NameObject("/A")]
                annot[NameObject("/Dest")] = ArrayObject([
                    writer.pages[first_pdf_page[target]].indirect_reference, NameObject("/Fit")])
                kept.append(ref)
        sheet[NameObject("/Annots")] = kept


def merge(printed: list[Printed], base_url: str) -> PdfWriter:
    """Join the printed pages in order, one bookmark each, links between them internal."""
    writer = PdfWriter()
    first_pdf_page: dict[str, int] = {}
    for part in printed:
        first_pdf_page[part.page] = len(writer.pages)
        writer.append(PdfReader(io.BytesIO(part.pdf)), outline_item=part.title or part.page)
    first_pdf_page["index"] = 0  # index.html only redirects to the root page
    _relink(writer, base_url, first_pdf_page)
    writer.add_metadata({"/Title": printed[0].title, "/Creator": "nfcourse tools/pdf.py"})
    writer.page_mode = NameObject("/UseOutlines")  # viewers open with the bookmarks shown
    return writer


def render_png(pdf: Path, png: Path, index: int = 0, dpi: int = PNG_DPI) -> None:
    """A picture of one PDF page (CI keeps the first among its screenshots)."""
    with pypdfium2.PdfDocument(pdf) as document:
        image = document[index].render(scale=dpi / 72).to_pil()
    png.parent.mkdir(parents=True, exist_ok=True)
    image.save(png)


def build(html_dir: Path, out: Path, pages: list[str] | None = None) -> list[Printed]:
    """Print ``pages`` (default: those of ``_toc.yml``) of the build in ``html_dir`` to ``out``."""
    pages = toc_pages() if pages is None else pages
    out.unlink(missing_ok=True)  # a failed print leaves no PDF of an older build behind
    with pagecheck.serve(html_dir) as base_url, pagecheck.chromium() as driver:
        printed = [print_page(driver, f"{base_url}{page}.html", page) for page in pages]
        writer = merge(printed, base_url)
    with out.open("wb") as f:
        writer.write(f)
    return printed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", nargs="?", default=str(ROOT / "_build" / "html"))
    parser.add_argument("--png", type=Path, help="also write a picture of the first PDF page")
    args = parser.parse_args(argv)
    html_dir = Path(args.html_dir)
    if not (html_dir / "index.html").exists():
        print(f"ERROR: no built book in {html_dir}: run `make html` first", file=sys.stderr)
        return 1
    start = time.monotonic()
    out = html_dir / PDF_NAME
    try:
        printed = build(html_dir, out)
    except RuntimeError as exc:  # a page not ready to print, or no chromium
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    if args.png:
        render_png(out, args.png)
    print(f"== {out}: {len(printed)} pages of the book in {len(PdfReader(out).pages)} PDF "
          f"pages, {out.stat().st_size / 1e6:.1f} MB, in {time.monotonic() - start:.0f} s"
          + (f"; first page: {args.png}" if args.png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
