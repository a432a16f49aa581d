"""Static checks of the built HTML (the browser test in tests/browser goes further).

    python tools/check_html.py _build/html

Fails if a page of the table of contents is missing, if any page loads MathJax from a CDN
instead of the copy served with the book, if a page makes the browser fetch anything (a script,
stylesheet, image, frame) from the network, if an <img> points at a file that is not there, or
if a notebook cell error was rendered into a page, or if a chapter page shows fewer output
figures or animation players than its executed record holds (a record whose figures the page
lost).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        pages += [c["file"] for c in part.get("chapters", [])]
    return [re.sub(r"\.(md|ipynb)$", "", p) for p in pages]


_HIDDEN = {"remove-cell", "remove-output"}


def record_figures(page: str) -> int | None:
    """How many image outputs the page's executed record shows (``None``: not a notebook)."""
    rec = ROOT / f"{page}.ipynb"
    if not rec.exists():
        return None
    import nbformat

    sys.path.insert(0, str(ROOT / "tools"))
    from notebooks import has_image

    nb = nbformat.read(rec, as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code"
               and not _HIDDEN & set(c.get("metadata", {}).get("tags", []))
               for o in c.get("outputs", []) if has_image(o))


#: What an animation player (``nfcourse.book.animation``) writes into a cell output and a page.
ANIMATION_MARK = 'class="nf-animation"'


def record_animations(page: str) -> int:
    """How many animation players the page's executed record shows (0: not a notebook)."""
    rec = ROOT / f"{page}.ipynb"
    if not rec.exists():
        return 0
    import nbformat

    nb = nbformat.read(rec, as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code"
               and not _HIDDEN & set(c.get("metadata", {}).get("tags", []))
               for o in c.get("outputs", [])
               if ANIMATION_MARK in "".join(o.get("data", {}).get("text/html", "")))


def page_figures(html: str) -> int:
    """Images a rendered page serves from the build's ``_images/`` (where Sphinx puts every
    notebook output figure)."""
    return len(re.findall(r'<img\b[^>]*\bsrc="(?:\.\./)*_images/', html))


def main(html_dir: str) -> int:
    out = Path(html_dir)
    problems: list[str] = []
    for page in toc_pages():
        path = out / f"{page}.html"
        if not path.exists():
            problems.append(f"{path}: page in _toc.yml was not built")
            continue
        html = path.read_text(encoding="utf-8")
        for src in re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', html, flags=re.I):
            if src.startswith(("http:", "https:", "//")):
                problems.append(f"{path}: MathJax loaded from the network ({src})")
            elif not (path.parent / src.split("?")[0]).resolve().exists():
                problems.append(f"{path}: MathJax file {src} missing from the build")
        # Anything the browser would fetch by itself must be in the build: the book is read
        # offline (file://, a static server with no network). Links (<a href>) may go out.
        for tag, url in re.findall(
                r'<(script|img|iframe|source|video|audio|embed|link)\b[^>]*?\b(?:src|href)='
                r'"((?:https?:)?//[^"]*)"', html, flags=re.I):
            if tag.lower() == "link" and not re.search(
                    rf'<link\b[^>]*rel="(?:stylesheet|preload|modulepreload|icon)"[^>]*'
                    rf'href="{re.escape(url)}"|<link\b[^>]*href="{re.escape(url)}"[^>]*'
                    rf'rel="(?:stylesheet|preload|modulepreload|icon)"', html, flags=re.I):
                continue  # e.g. <link rel="canonical">: not fetched
            problems.append(f"{path}: <{tag}> loads {url} from the network")
        for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
            if src.startswith("data:") or src.startswith(("http:", "https:")):
                continue
            if not (path.parent / src).resolve().exists():
                problems.append(f"{path}: image {src} missing")
        want = record_figures(page)
        if want is not None and page_figures(html) < want:
            problems.append(f"{path}: {page_figures(html)} output figure(s) on the page, "
                            f"{want} in the executed record")
        if html.count(ANIMATION_MARK) < record_animations(page):
            problems.append(f"{path}: {html.count(ANIMATION_MARK)} animation(s) on the page, "
                            f"{record_animations(page)} in the executed record")
        if "Traceback (most recent call last)" in html or 'class="output traceback' in html:
            problems.append(f"{path}: a cell error is rendered in the page")
    for p in problems:
        print("FAIL", p)
    if not problems:
        print(f"HTML check passed: {len(toc_pages())} page(s) in {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "_build/html"))
