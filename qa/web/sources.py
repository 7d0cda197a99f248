"""The Articles tab's web sources: adding a page or a feed by its URL, and the list of followed feeds with their state."""

from __future__ import annotations

from pathlib import Path

from ..feeds import FeedUpdate, add_url, feed_states

FEED_HEADERS = ["Feed", "Folder", "Last update", "New entries", "Pages", "Last error"]
FEED_COLUMN_WIDTHS = ["30%", "20%", "16%", "8%", "8%", "18%"]


def fetch_url(url: str | None, articles_root: Path) -> tuple[str, bool]:
    """Add the page or feed at `url` to the folder: the line saying what happened, and whether anything was added."""
    if not (url or "").strip():
        return "Paste the web address of a page or of an RSS or Atom feed first.", False
    try:
        added = add_url(url, articles_root)
    except (ValueError, OSError) as error:
        return f"Nothing added: {error}", False
    if isinstance(added, FeedUpdate):
        return f"Following the feed {added.describe()}", True
    return added.describe()[0].upper() + added.describe()[1:], added.duplicate is None


def feed_rows(articles_root: Path) -> list[list[str]]:
    """A row per followed feed: its title and URL, folder, last update, new entries then, pages in all, last error."""
    try:
        listed = feed_states(articles_root)
    except (ValueError, OSError) as error:
        return [[f"The feeds file cannot be read: {error}", "", "", "", "", ""]]
    return [
        [f"{state.title} ({feed.url})" if state.title else feed.url, feed.folder, state.checked_at or "never",
         str(state.new_entries), str(state.pages), state.last_error or ""]
        for feed, state in listed
    ]
