"""Scope: which articles a question may be answered from (a sub-folder, a date range, a list of articles)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

SCOPE_KEYS = ("folder", "since", "until", "articles")


@dataclass(frozen=True)
class Scope:
    """A sub-folder of the articles folder, an inclusive date range (either end may be open) and a list of article
    paths; an article is in scope when it meets every part that is set. An article without a known date is outside
    every date range."""

    folder: str | None = None
    since: date | None = None
    until: date | None = None
    articles: frozenset[str] | None = None

    @classmethod
    def of(cls, where: Mapping | None, articles_dir: str | Path) -> Scope | None:
        """The scope `where` describes (`answer(where=...)`), or None for no limit; raises ValueError saying what is
        wrong with it. Article paths may be absolute or relative to `articles_dir`."""
        if not where:
            return None
        if not isinstance(where, Mapping):
            raise ValueError(f"where must be a mapping with keys {', '.join(SCOPE_KEYS)}, not {type(where).__name__}")
        unknown = sorted(set(where) - set(SCOPE_KEYS))
        if unknown:
            raise ValueError(f"unknown scope key {unknown[0]!r}: use {', '.join(SCOPE_KEYS)}")
        folder = where.get("folder")
        articles = where.get("articles")
        if isinstance(articles, (str, Path)):
            articles = [articles]
        return cls(
            folder=str(folder).strip("/") or None if folder else None,
            since=_day(where.get("since"), "since"),
            until=_day(where.get("until"), "until"),
            articles=frozenset(_relative(path, articles_dir) for path in articles) if articles is not None else None,
        )

    def admits(self, path: str, article_date: str | None) -> bool:
        """Whether the article at `path` (relative to the articles folder), dated `article_date` (as the article
        gives it), is in scope."""
        if self.folder and not (path == self.folder or path.startswith(self.folder + "/")):
            return False
        if self.articles is not None and path not in self.articles:
            return False
        if self.since or self.until:
            day = published_on(article_date)
            if day is None or (self.since and day < self.since) or (self.until and day > self.until):
                return False
        return True


@lru_cache(maxsize=100_000)
def published_on(text: str | None) -> date | None:
    """The day an article's date text names ("15:06 JST, November 16, 2024", "2025-03-14"), read by dateparser."""
    if not text:
        return None
    import dateparser

    parsed = dateparser.parse(text, settings={"PREFER_DAY_OF_MONTH": "first", "RETURN_AS_TIMEZONE_AWARE": False})
    return parsed.date() if parsed else None


def _day(value: object, key: str) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{key} must be a date as YYYY-MM-DD, not {value!r}") from None


def _relative(path: str | Path, articles_dir: str | Path) -> str:
    candidate = Path(path)
    if candidate.is_absolute():
        try:
            return candidate.resolve().relative_to(Path(articles_dir).resolve()).as_posix()
        except ValueError:
            return candidate.as_posix()
    return candidate.as_posix()
