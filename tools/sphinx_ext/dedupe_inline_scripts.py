"""Sphinx extension: emit each inline ``<script>`` of a page once.

Sphinx 7.4 adds every script registered after the builder started twice to each page: once as
registered (``filename=None``) and once more from the registry with ``filename=''``, which its
duplicate check does not recognise. For sphinx-thebe's inline configuration the second copy
re-declares ``const THEBE_JS_URL`` and every page logs "Uncaught SyntaxError: Identifier
'THEBE_JS_URL' has already been declared" (found by the browser check in tests/browser).
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx


def _key(script: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    attributes = getattr(script, "attributes", {})
    return (getattr(script, "filename", None) or "",
            tuple(sorted((k, str(v)) for k, v in attributes.items())))


def drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str,
                           context: dict[str, Any], doctree: nodes.document | None) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    unique = []
    for script in scripts:
        if (key := _key(script)) not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # the builder restores its own list before the next page


def setup(app: Sphinx) -> dict[str, Any]:
    # Late priority: after extensions that add page-specific scripts in html-page-context.
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
