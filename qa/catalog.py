"""The article list as readers browse it: search by title or text, sort, pages, and the folders a question can be scoped to."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .articles import article_text
from .index import IndexedArticle
from .scope import published_on

logger = logging.getLogger(__name__)

PAGE_SIZE = 25
NEWEST_FIRST, OLDEST_FIRST, BY_TITLE, BY_FILE = "Newest first", "Oldest first", "Title A–Z", "File"
SORT_ORDERS = (NEWEST_FIRST, OLDEST_FIRST, BY_TITLE, BY_FILE)


@dataclass(frozen=True)
class CatalogPage:
    """One page of the articles that match a search, in the chosen order."""

    articles: list[IndexedArticle]
    page: int
    pages: int
    matches: int
    total: int

    @property
    def first(self) -> int:
        """The 1-based position of this page's first article among the matches (0 when there are none)."""
        return self.page * PAGE_SIZE + 1 if self.articles else 0

    def describe(self) -> str:
        """"Articles 26–50 of 312 matching (2,229 in all) · page 2 of 13"."""
        if not self.matches:
            return f"No article matches (of {self.total:,})."
        matching = f" matching ({self.total:,} in all)" if self.matches != self.total else ""
        span = f"{self.first:,}–{self.first + len(self.articles) - 1:,}"
        return f"Articles {span} of {self.matches:,}{matching} · page {self.page + 1} of {self.pages}"


def browse(
    articles: Sequence[IndexedArticle],
    articles_dir: str | Path,
    search: str = "",
    order: str = NEWEST_FIRST,
    page: int = 0,
) -> CatalogPage:
    """The `page`-th page (from 0; clamped to the last) of the articles whose title or text holds every word of
    `search` (case-insensitive), sorted by `order` (one of SORT_ORDERS; articles without a date come last)."""
    if order not in SORT_ORDERS:
        raise ValueError(f"unknown order {order!r}: use one of {', '.join(SORT_ORDERS)}")
    words = search.casefold().split()
    matching = [article for article in articles if not words or _holds(article, words, Path(articles_dir))]
    ordered = _sorted(matching, order)
    pages = max(1, -(-len(ordered) // PAGE_SIZE))
    page = min(max(page, 0), pages - 1)
    return CatalogPage(ordered[page * PAGE_SIZE : (page + 1) * PAGE_SIZE], page, pages, len(ordered), len(articles))


def folders(articles: Sequence[IndexedArticle]) -> list[str]:
    """Every sub-folder of the articles folder that holds an article, nested ones included, sorted."""
    found = {str(parent) for article in articles for parent in PurePosixPath(article.path).parents}
    found.discard(".")
    return sorted(found)


def _holds(article: IndexedArticle, words: list[str], articles_dir: Path) -> bool:
    title = article.title.casefold()
    if all(word in title for word in words):
        return True
    text = _searchable_text(articles_dir / article.path)
    return all(word in title or word in text for word in words)


def _searchable_text(path: Path) -> str:
    """The article's text, case-folded, remembered until the file changes ("" when it cannot be read)."""
    try:
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
        remembered = _texts.get(path)
        if remembered is None or remembered[0] != version:
            remembered = _texts[path] = (version, article_text(path).casefold())
        return remembered[1]
    except (OSError, ValueError) as error:
        logger.debug("cannot search %s: %s", path, error)
        return ""


_texts: dict[Path, tuple[tuple[int, int], str]] = {}


def _sorted(articles: list[IndexedArticle], order: str) -> list[IndexedArticle]:
    if order == BY_TITLE:
        return sorted(articles, key=lambda article: (article.title.casefold(), article.path))
    if order == BY_FILE:
        return sorted(articles, key=lambda article: article.path)
    dated = [(published_on(article.date), article) for article in articles]
    undated = [article for day, article in dated if day is None]
    known = sorted(
        ((day, article) for day, article in dated if day is not None),
        key=lambda pair: (pair[0], pair[1].path),
        reverse=order == NEWEST_FIRST,
    )
    return [article for _, article in known] + sorted(undated, key=lambda article: article.path)

