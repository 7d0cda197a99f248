"""Pages from the web: fetched pages kept in the articles folder with their source URL and fetch time, never twice;
and the URL an article file came from."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .articles import article_source, find_article_files, require_folder, text_of, write_atomically
from .fetch import Fetched, FetchError, Fetcher, borrowed, check_url

logger = logging.getLogger(__name__)

STATE_DIR = ".qa"
"""qa's own records inside the articles folder (hidden, so never read as articles)."""
FINGERPRINTS_FILE = "fingerprints.json"
"""For each article file's content (SHA-256), the fingerprint of its article text, so duplicates are found fast."""
PAGE_SUFFIX = ".html"
MAX_NAME_CHARS = 80
_NOT_NAME = re.compile(r"[^a-z0-9]+")
_SPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True)
class SavedPage:
    """What became of a URL: saved at `path` (relative to the articles folder), or not saved because the collection
    already has it (`duplicate` says why, and `path` is the file that has it)."""

    url: str
    path: str
    title: str
    duplicate: str | None = None

    def describe(self) -> str:
        if self.duplicate:
            return f"already in the collection ({self.duplicate}): {self.path} — not added again"
        return f"added {self.path} ({self.title})"


def same_url(url: str) -> str:
    """`url` in the form two addresses of one page share: scheme and host in lower case, no #fragment."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


@dataclass
class Collection:
    """What the articles folder holds already, to tell a new page from one it has: the saved pages' source URLs
    (see same_url) and every article's text fingerprint, each with its file."""

    root: Path
    urls: dict[str, str]
    fingerprints: dict[str, str]

    @classmethod
    def of(cls, articles_dir: str | Path) -> Collection:
        root = require_folder(articles_dir)
        return cls(root, known_urls(root), collection_fingerprints(root))

    def has_url(self, url: str) -> str | None:
        return self.urls.get(same_url(url))


def save_page(url: str, articles_dir: str | Path, folder: str = "", fetcher: Fetcher | None = None) -> SavedPage:
    """Fetch the page at `url` and keep it as an .html file in `articles_dir` (under `folder`), named by its title,
    with its URL and the fetch time recorded atop it; unless the collection already has that URL or that article
    text. Raises FetchError (a ValueError) saying why a page cannot be added; nothing is written then."""
    url = check_url(url)
    collection = Collection.of(articles_dir)
    if (existing := collection.has_url(url)) is not None:
        return SavedPage(url, existing, "", "same URL")
    with borrowed(fetcher) as client:
        fetched = client.get(url)
    return keep_page(fetched, collection, folder, requested=url)


def keep_page(fetched: Fetched, collection: Collection, folder: str, requested: str) -> SavedPage:
    """Keep a fetched page in the collection's folder (see save_page), and remember it in `collection`."""
    kind = fetched.media_type
    if not fetched.is_html and (kind or not fetched.content.lstrip()[:1] == b"<"):
        raise FetchError(f"{fetched.url}: not a web page ({kind or 'unknown content'}); qa keeps HTML pages")
    if (existing := collection.has_url(fetched.url)) is not None:
        return SavedPage(requested, existing, "", "same URL")
    data = _recorded(fetched.url) + fetched.content
    try:
        text = text_of(data, PAGE_SUFFIX)
    except ValueError as error:
        raise FetchError(f"{fetched.url}: {error}") from None
    title = text.split("\n", 1)[0].strip()
    fingerprint = text_fingerprint(text)
    if (existing := collection.fingerprints.get(fingerprint)) is not None:
        return SavedPage(requested, existing, title, "same text")
    root = collection.root
    target_dir = root / folder
    target_dir.mkdir(parents=True, exist_ok=True)
    target = _free_name(target_dir, file_stem(title) or file_stem(urlsplit(fetched.url).hostname or "") or "page")
    write_atomically(target, data)
    _remember_fingerprint(root, hashlib.sha256(data).hexdigest(), fingerprint)
    relative = target.relative_to(root).as_posix()
    collection.urls[same_url(requested)] = collection.urls[same_url(fetched.url)] = relative
    collection.fingerprints[fingerprint] = relative
    logger.info("saved %s as %s", fetched.url, relative)
    return SavedPage(requested, relative, title)


def known_urls(root: Path) -> dict[str, str]:
    """The source URL of every saved page in the folder (see same_url), and its file."""
    found = {}
    for path in find_article_files(root):
        if (source := article_source(path)) is not None:
            found.setdefault(same_url(source), path.relative_to(root).as_posix())
    return found


def text_fingerprint(text: str) -> str:
    """What two copies of one article share however they were saved: the hash of its words, case and spacing folded."""
    return hashlib.sha256(_SPACE_RUN.sub(" ", text).strip().casefold().encode("utf-8")).hexdigest()


def collection_fingerprints(root: Path) -> dict[str, str]:
    """The text fingerprint of every readable article in the folder, and its file. Fingerprints are remembered by
    file content in STATE_DIR, so only new and changed files are read."""
    remembered = read_record(root / STATE_DIR / FINGERPRINTS_FILE)
    current, found = {}, {}
    for path in find_article_files(root):
        try:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            current[digest] = remembered.get(digest) or text_fingerprint(text_of(data, path.suffix))
        except (OSError, ValueError):
            continue
        found.setdefault(current[digest], path.relative_to(root).as_posix())
    if current != remembered:
        write_record(root / STATE_DIR / FINGERPRINTS_FILE, current)
    return found


def _remember_fingerprint(root: Path, digest: str, fingerprint: str) -> None:
    remembered = read_record(root / STATE_DIR / FINGERPRINTS_FILE)
    remembered[digest] = fingerprint
    write_record(root / STATE_DIR / FINGERPRINTS_FILE, remembered)


def file_stem(text: str) -> str:
    """A safe, readable file name stem from a title or host: ASCII letters and digits joined by hyphens."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return _NOT_NAME.sub("-", ascii_text).strip("-")[:MAX_NAME_CHARS].rstrip("-")


def _free_name(folder: Path, stem: str) -> Path:
    candidate, number = folder / f"{stem}{PAGE_SUFFIX}", 2
    while candidate.exists():
        candidate, number = folder / f"{stem}-{number}{PAGE_SUFFIX}", number + 1
    return candidate


def _recorded(url: str) -> bytes:
    """The lines atop a saved page: its URL, as browsers record it, and when qa fetched it."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"<!-- saved from url=({len(url):04d}){url} -->\n<!-- fetched by qa {when} -->\n".encode("utf-8")


def read_record(path: Path) -> dict:
    """A JSON record of qa's in STATE_DIR (empty when missing or unreadable)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def write_record(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8"))
