"""Pieces the chat's views share: the page title, escaping for Markdown, hints, short titles and display paths."""

from __future__ import annotations

import html
import re
from pathlib import Path

TITLE = "qa · ask the articles"
SHORT_TITLE_WORDS = 10
ARTICLE_HINT = "Click a citation number in an answer to read the quote here, highlighted in its article."
LIBRARY_HINT = "Click an article in the table to read it here."
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$:])")


def markdown_text(text: str) -> str:
    """`text` escaped so that Markdown shows it literally: no HTML, no links, no formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def hint_html(hint: str = ARTICLE_HINT) -> str:
    return f'<div class="qa-article"><p class="qa-hint">{html.escape(hint)}</p></div>'


def shortened(title: str) -> str:
    words = title.split()
    return " ".join(words[:SHORT_TITLE_WORDS]) + ("…" if len(words) > SHORT_TITLE_WORDS else "")


def display_path(path: str, articles_root: Path) -> str:
    """The article's path relative to the articles folder where it lies inside it, else its file name."""
    try:
        return Path(path).resolve().relative_to(articles_root.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def link_target(url: str) -> str:
    """A web address as a link's target in Markdown or HTML: parentheses, quotes and spaces percent-encoded."""
    return url.replace("(", "%28").replace(")", "%29").replace('"', "%22").replace(" ", "%20")
