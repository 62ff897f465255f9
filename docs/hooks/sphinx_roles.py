"""MkDocs hook: the package's docstrings cross-reference in Sphinx style (``:func:`name```); Markdown renders the
name as code and leaves the role in front of it. This drops the role, so the reference reads as plain code."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):(?=<code>)")


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub("", html)
