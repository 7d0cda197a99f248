"""Feeds: the RSS and Atom feeds an articles folder follows (listed in its FEEDS_FILE), and updating them: the page of
every new entry is fetched into one sub-folder per feed, where the folder watcher indexes it."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from .articles import require_folder
from .fetch import Fetched, FetchError, Fetcher, borrowed, check_url
from .sources import STATE_DIR, Collection, SavedPage, read_record, write_record, file_stem, keep_page, same_url

logger = logging.getLogger(__name__)

FEEDS_FILE = "feeds.conf"
"""The feeds a folder follows, in the folder itself: one per line, the feed's URL and then the sub-folder its pages
go into. `qa feeds add` and `remove` edit it; so may anyone, with a text editor."""
FEEDS_HEADER = (
    "# The feeds qa follows for this folder: one per line, the feed's URL, then the sub-folder its pages are saved in.\n"
    "# `qa feeds add URL` and `qa feeds remove URL` edit this file; you may edit it too. Lines starting with # are notes.\n"
)
STATE_FILE = "feeds.json"
"""Inside STATE_DIR: what each feed's last update found (validators, entries seen, errors)."""
DEFAULT_FEEDS_EVERY_MINUTES = 30.0
MAX_SEEN_ENTRIES = 2_000
"""Entries remembered per feed: more than any feed lists at once."""
FEEDS_FOLDER = "feeds"
"""Where each feed's sub-folder is made, unless its line in FEEDS_FILE names another."""

_update_lock = threading.Lock()
"""One update at a time in a process (the background follower, the chat's buttons)."""


@dataclass(frozen=True)
class Feed:
    """A followed feed: its URL and the sub-folder (of the articles folder) its pages are saved in."""

    url: str
    folder: str


@dataclass
class FeedState:
    """What the last updates of a feed found."""

    title: str = ""
    etag: str | None = None
    last_modified: str | None = None
    seen: list[str] = field(default_factory=list)
    checked_at: str | None = None
    new_entries: int = 0
    """Pages saved by the last update."""
    pages: int = 0
    """Pages saved since the feed was added."""
    last_error: str | None = None


@dataclass(frozen=True)
class FeedUpdate:
    """One feed's update: the pages saved (or found in the collection already), whether the feed was unchanged
    (the server answered a conditional request with 304), and what failed."""

    feed: Feed
    saved: list[SavedPage] = field(default_factory=list)
    unchanged: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def added(self) -> list[SavedPage]:
        return [page for page in self.saved if page.duplicate is None]

    def describe(self) -> str:
        if self.unchanged:
            return f"{self.feed.url}: unchanged since the last update"
        parts = [f"{len(self.added)} new page{'s' if len(self.added) != 1 else ''} in {self.feed.folder}/"]
        if len(self.saved) > len(self.added):
            parts.append(f"{len(self.saved) - len(self.added)} already in the collection")
        if self.errors:
            parts.append(f"{len(self.errors)} failed: {self.errors[0]}")
        return f"{self.feed.url}: " + "; ".join(parts)


def read_feeds(articles_dir: str | Path) -> list[Feed]:
    """The feeds the folder follows (none when it has no FEEDS_FILE); raises ValueError naming a bad line."""
    path = require_folder(articles_dir) / FEEDS_FILE
    if not path.exists():
        return []
    feeds = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("#", 1)[0].split() if not line.lstrip().startswith("#") else []
        if not fields:
            continue
        try:
            url = check_url(fields[0])
        except FetchError as error:
            raise ValueError(f"{path}, line {number}: {error}") from None
        folder = fields[1] if len(fields) > 1 else default_folder(url)
        if Path(folder).is_absolute() or ".." in Path(folder).parts or folder.startswith("."):
            raise ValueError(f"{path}, line {number}: the folder {folder!r} must be a sub-folder of the articles folder")
        feeds.append(Feed(url, folder))
    return feeds


def default_folder(url: str) -> str:
    """The sub-folder a feed's pages go into: FEEDS_FOLDER/ then its host and path, e.g. feeds/example-com-news-rss."""
    parts = urlsplit(url)
    stem = file_stem(f"{parts.hostname or ''} {parts.path}") or "feed"
    return f"{FEEDS_FOLDER}/{stem}"


def feed_states(articles_dir: str | Path) -> list[tuple[Feed, FeedState]]:
    """Each followed feed with what its last updates found."""
    root = require_folder(articles_dir)
    states = _read_states(root)
    return [(feed, states.get(feed.url, FeedState())) for feed in read_feeds(root)]


def add_feed(url: str, articles_dir: str | Path, fetcher: Fetcher | None = None) -> FeedUpdate:
    """Follow the feed at `url`: it is fetched and read first (a broken feed raises FetchError and is not added),
    then listed in FEEDS_FILE and its entries' pages saved. Raises ValueError if the folder follows it already."""
    url = check_url(url)
    with borrowed(fetcher) as client:
        return _follow(client.get(url), url, require_folder(articles_dir), client)


def remove_feed(url: str, articles_dir: str | Path) -> Feed:
    """Stop following a feed: its line leaves FEEDS_FILE; the pages it brought stay. Raises ValueError if the folder
    does not follow it."""
    root = require_folder(articles_dir)
    feed = next((feed for feed in read_feeds(root) if same_url(feed.url) == same_url(url)), None)
    if feed is None:
        raise ValueError(f"{root} follows no feed {url!r}; `qa feeds list` shows the ones it follows")
    path = root / FEEDS_FILE
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not (line.split() and line.split()[0] == feed.url)]
    path.write_text("".join(kept), encoding="utf-8")
    with _update_lock:
        states = _read_states(root)
        states.pop(feed.url, None)
        _write_states(root, states)
    return feed


def update_feeds(articles_dir: str | Path, fetcher: Fetcher | None = None) -> list[FeedUpdate]:
    """Fetch every followed feed once (a conditional request: an unchanged feed costs a 304) and save the pages of
    its new entries. A feed that fails is reported and changes nothing; its pages are tried again next time."""
    root = require_folder(articles_dir)
    feeds = read_feeds(root)
    if not feeds:
        return []
    updates = []
    with borrowed(fetcher) as client, _update_lock:
        collection = Collection.of(root)
        states = _read_states(root)
        for feed in feeds:
            state = states.setdefault(feed.url, FeedState())
            updates.append(_update(feed, state, collection, client))
            _write_states(root, states)
    return updates


def add_url(url: str, articles_dir: str | Path, fetcher: Fetcher | None = None) -> SavedPage | FeedUpdate:
    """Add what `url` is: a web page is saved (a SavedPage), a feed is followed (its first FeedUpdate). Raises
    ValueError (FetchError) saying why nothing was added."""
    url = check_url(url)
    root = require_folder(articles_dir)
    collection = Collection.of(root)
    if (existing := collection.has_url(url)) is not None:
        return SavedPage(url, existing, "", "same URL")
    with borrowed(fetcher) as client:
        fetched = client.get(url)
        if fetched.is_html:
            return keep_page(fetched, collection, "", requested=url)
        return _follow(fetched, url, root, client)


def _follow(fetched: Fetched, url: str, root: Path, client: Fetcher) -> FeedUpdate:
    """List a fetched feed in FEEDS_FILE and save its entries' pages."""
    parsed = parse_feed(fetched)
    if any(same_url(feed.url) == same_url(url) for feed in read_feeds(root)):
        raise ValueError(f"{root} follows {url} already; `qa feeds update` fetches its new entries")
    feed = Feed(url, default_folder(url))
    path = root / FEEDS_FILE
    existing = path.read_text(encoding="utf-8") if path.exists() else FEEDS_HEADER
    path.write_text(existing + ("" if existing.endswith("\n") else "\n") + f"{feed.url} {feed.folder}\n", encoding="utf-8")
    with _update_lock:
        states = _read_states(root)
        state = states.setdefault(feed.url, FeedState(checked_at=_now()))
        update = _save_entries(feed, state, parsed, fetched, Collection.of(root), client)
        _write_states(root, states)
    return update


def parse_feed(fetched: Fetched):
    """The feedparser reading of a fetched feed; raises FetchError when it is not a readable RSS, Atom or RDF feed."""
    import feedparser

    parsed = feedparser.parse(fetched.content, response_headers={
        "content-location": fetched.url, "content-type": fetched.content_type or "application/xml"})
    if not parsed.get("version") or (parsed.get("bozo") and not parsed.entries):
        reason = str(parsed.get("bozo_exception") or "no feed in it").splitlines()[0]
        raise FetchError(f"{fetched.url}: not a readable RSS or Atom feed ({reason})")
    return parsed


def _update(feed: Feed, state: FeedState, collection: Collection, client: Fetcher) -> FeedUpdate:
    """Update one feed (see update_feeds); its outcome is kept in `state`."""
    state.checked_at = _now()
    try:
        fetched = client.get(feed.url, state.etag, state.last_modified)
        if fetched.unchanged:
            state.new_entries, state.last_error = 0, None
            logger.info("%s: unchanged", feed.url)
            return FeedUpdate(feed, unchanged=True)
        parsed = parse_feed(fetched)
    except FetchError as error:
        state.new_entries, state.last_error = 0, str(error)
        logger.warning("feed %s: %s", feed.url, error)
        return FeedUpdate(feed, errors=[str(error)])
    return _save_entries(feed, state, parsed, fetched, collection, client)


def _save_entries(feed: Feed, state: FeedState, parsed, fetched: Fetched, collection: Collection,
                  client: Fetcher) -> FeedUpdate:
    """Save the page of each entry not seen before. A page that failed for a passing reason (a timeout, a server
    error) is tried again at the next update: the feed's validators are then not kept. One that cannot be kept (not
    HTML, too large, refused) is reported once and left."""
    seen = set(state.seen)
    saved, errors = [], []
    for entry in parsed.entries:
        link, key = entry.get("link"), _entry_key(entry)
        if not key or key in seen:
            continue
        if link and not link.lower().startswith(("http://", "https://")):
            logger.warning("feed %s: entry %s links to %r, not a web page: skipped", feed.url, key, link)
        elif link:
            try:
                if (existing := collection.has_url(link)) is not None:
                    saved.append(SavedPage(link, existing, entry.get("title", ""), "same URL"))
                else:
                    saved.append(keep_page(client.get(link), collection, feed.folder, requested=link))
            except FetchError as error:
                errors.append(str(error))
                logger.warning("feed %s: %s", feed.url, error)
                if error.transient:
                    continue  # tried again at the next update
        state.seen.append(key)
        seen.add(key)
    state.seen = state.seen[-MAX_SEEN_ENTRIES:]
    state.title = parsed.feed.get("title", "") or state.title
    if all(key in seen for key in map(_entry_key, parsed.entries) if key):
        state.etag, state.last_modified = fetched.etag, fetched.last_modified
    update = FeedUpdate(feed, saved, errors=errors)
    state.new_entries = len(update.added)
    state.pages += len(update.added)
    state.last_error = f"{len(errors)} page{'s' if len(errors) != 1 else ''} failed: {errors[0]}" if errors else None
    return update


def _entry_key(entry) -> str | None:
    """What tells one feed entry from another: its id, else its link."""
    return entry.get("id") or entry.get("link")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _read_states(root: Path) -> dict[str, FeedState]:
    known = set(FeedState.__dataclass_fields__)
    return {url: FeedState(**{key: value for key, value in state.items() if key in known})
            for url, state in read_record(root / STATE_DIR / STATE_FILE).items() if isinstance(state, dict)}


def _write_states(root: Path, states: dict[str, FeedState]) -> None:
    write_record(root / STATE_DIR / STATE_FILE, {url: asdict(state) for url, state in states.items()})


class FeedFollower:
    """Updates the folder's feeds now and then every `every_minutes`, in a background thread; the folder watcher
    indexes the pages that arrive. `describe()` says how the last update went, for the page."""

    def __init__(self, articles_dir: str | Path, every_minutes: float = DEFAULT_FEEDS_EVERY_MINUTES):
        self.articles_dir = Path(articles_dir)
        self.every_seconds = every_minutes * 60
        self.last: list[FeedUpdate] = []
        self._fetcher = Fetcher()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qa-feeds", daemon=True)

    def start(self) -> FeedFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = update_feeds(self.articles_dir, self._fetcher)
            except Exception:  # a bad feeds file or a full disk: logged, and tried again next time
                logger.exception("updating the feeds of %s failed", self.articles_dir)
            self._stop.wait(self.every_seconds)
