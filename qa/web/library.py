"""The index's articles as the page shows them: the Articles tab's table and article view, the chat's scope and its
description, and example questions."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from .. import IndexedArticle, IndexSummary, catalog, describe_index
from ..articles import article_text
from ..scope import Scope
from .render import hint_html, markdown_text, shortened

ALL_FOLDERS = "All folders"
EXAMPLE_COUNT = 3


def where_of(folder: object, since: object, until: object, articles: object) -> dict | None:
    """The `where=` of the chat's scope controls, or None for every article; raises ValueError saying what is wrong."""
    where = {
        "folder": folder if folder and folder != ALL_FOLDERS else None,
        "since": str(since or "").strip() or None,
        "until": str(until or "").strip() or None,
        "articles": list(articles) if articles else None,
    }
    where = {key: value for key, value in where.items() if value}
    Scope.of(where, ".")
    return where or None


def scope_markdown(where: dict | None, article_count: int) -> str:
    """The line above the chat that says which articles questions are answered from."""
    if not where:
        return f"**Answering from:** all {article_count:,} articles." if article_count else "**Answering from:** all articles."
    parts = []
    if where.get("folder"):
        parts.append(f"the folder {where['folder']}")
    if where.get("since") and where.get("until"):
        parts.append(f"dated {where['since']} to {where['until']}")
    elif where.get("since") or where.get("until"):
        parts.append(f"dated from {where['since']}" if where.get("since") else f"dated up to {where['until']}")
    if where.get("articles"):
        count = len(where["articles"])
        parts.append(f"{count} chosen article{'s' if count != 1 else ''} ({', '.join(where['articles'][:3])}"
                     f"{', …' if count > 3 else ''})")
    return "**Answering from:** " + markdown_text("articles in " + "; ".join(parts) + ".")


def article_html(articles_root: Path, path: str, store: str) -> str:
    """An indexed article as escaped text under its title, date and file, for the Articles tab."""
    record = next((article for article in indexed_articles(store) if article.path == path), None)
    try:
        text = article_text(articles_root / path)
    except (OSError, ValueError) as error:
        return hint_html(f"{path} cannot be read: {error}. Press “Rebuild index” to bring the index up to date.")
    title = record.title if record else path
    head = " · ".join(html.escape(part) for part in (record.date if record else None, path) if part)
    header = f'<div class="qa-article-head"><strong>{html.escape(title)}</strong><br>{head}</div>'
    return f'<div class="qa-article">{header}<div class="qa-article-text">{html.escape(text)}</div></div>'


def indexed_articles(store: str) -> list[IndexedArticle]:
    try:
        return describe_index(store=store).articles
    except (FileNotFoundError, RuntimeError):
        return []


def catalog_views(store: str, articles_root: Path, search: str, order: str, page: int):
    """The Articles table's rows for one page of a search, the line saying where it stands, the page number and the
    paths of its rows (in the table's order)."""
    found = catalog.browse(indexed_articles(store), articles_root, search or "", order or catalog.NEWEST_FIRST, page)
    rows = [[article.title, article.date or "", article.path, article.chunks] for article in found.articles]
    return rows, markdown_text(found.describe()), found.page, [article.path for article in found.articles]


def scope_choices(store: str, chosen: list[str]):
    """The scope's folder and article choosers, offering what the index holds now."""
    articles = indexed_articles(store)
    paths = {article.path for article in articles}
    return (
        gr.Dropdown(choices=[ALL_FOLDERS, *catalog.folders(articles)]),
        gr.Dropdown(
            choices=[(f"{shortened(article.title)} · {article.path}", article.path) for article in articles],
            value=[path for path in chosen if path in paths],
        ),
    )


def index_summary(store: str) -> str:
    """The index state as Markdown."""
    try:
        return _summary_markdown(describe_index(store=store))
    except (FileNotFoundError, RuntimeError) as error:
        return markdown_text(f"No index yet ({error}). Add articles below or press “Rebuild index”.")


def _summary_markdown(summary: IndexSummary) -> str:
    facts = [
        ("Model", f"{summary.model} ({summary.dimension} dimensions, on {summary.backend})"),
        ("Built", summary.built_at),
        ("Articles", str(summary.n_articles)),
        ("Chunks", str(summary.n_chunks)),
        ("Folder", summary.articles_dir),
    ]
    return " · ".join(f"**{name}:** {markdown_text(value)}" for name, value in facts)


def examples(store: str) -> list[dict[str, str]]:
    """Example questions for the empty chat, made from the titles of the first indexed articles."""
    return [
        {"text": f"What do the articles say about “{shortened(article.title)}”?"}
        for article in indexed_articles(store)[:EXAMPLE_COUNT]
    ]
