"""Articles: finding and reading article files, their metadata, and which parts of them are the story."""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import ARTICLE_SUFFIXES, PAGE_SUFFIXES

logger = logging.getLogger(__name__)

MAX_ARTICLE_BYTES = 5_000_000
"""Larger files are skipped: a news article is tens of kilobytes; a 20 MB file is a dump, not a story."""
WESTERN_PUNCTUATION = frozenset("\u00a0“”‘’„‚–—…«»‹›·•€£¥¢°§¶©®™±×÷")
"""Characters other than letters that Western text in Windows-1252 is made of."""
MAX_LINK_LINE_CHARS = 160
MIN_LIST_RUN = 3
METADATA_SCAN_LINES = 6

_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
_SEPARATOR = re.compile(r"^[\W_]{1,20}$")
_BULLET = re.compile(r"^\s*(?:[-*•·–—]|\d{1,2}[.)])\s+")
_FURNITURE_HEADER = re.compile(
    r"\b(popular|ranking|related|most (read|viewed|shared|popular)|recommended|read more|see also|trending|"
    r"more (from|stories|news|on)|you may also like|top stories|latest (news|stories)|editor'?s picks|"
    r"advertisement|share this|follow us|sign up|subscribe|newsletter)\b",
    re.IGNORECASE,
)
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DATE = re.compile(
    rf"\b(?:{_MONTH}\s+\d{{1,2}},?\s+\d{{4}}|\d{{1,2}}\s+{_MONTH},?\s+\d{{4}}|\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}/\d{{1,2}}/\d{{4}})\b",
    re.IGNORECASE,
)
_SOURCE_LINE = re.compile(rb"<!--\s*saved from url=\(\d+\)(https?://\S+?)\s*-->", re.IGNORECASE)
"""The line a browser writes atop a page it saves (qa writes it too): the page's web address."""
SOURCE_HEAD_BYTES = 4_096
"""How far into a saved page its source line is looked for."""
_DATELINE = re.compile(r"^([A-Z][A-Z.'\- ]{1,40}?(?:,\s*[A-Z][A-Za-z.\- ]{1,30}?)?)\s*(?:\([^)]{1,40}\)\s*)?[—–-]{1,2}\s")


@dataclass(frozen=True)
class Article:
    """One article file: its exact text, metadata, and the spans of that text that are the story."""

    path: str
    """Path relative to the articles folder, with forward slashes."""
    text: str
    """The file's text as `article_text` returns it (for UTF-8 text, exactly what `Path.read_text(encoding="utf-8")`
    returns); all offsets refer to it."""
    sha256: str
    title: str
    date: str | None = None
    dateline: str | None = None
    paragraphs: list[tuple[int, int]] = field(default_factory=list)
    """(start, end) offsets of the story's paragraphs; the title, the date line and page furniture are left out."""


@dataclass(frozen=True)
class SkippedFile:
    """A file under the articles folder that could not be used, and why."""

    path: str
    reason: str


def require_folder(articles_dir: str | Path) -> Path:
    """`articles_dir` as a Path; raises FileNotFoundError saying what to do when it is not a folder."""
    root = Path(articles_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"articles folder {str(root)!r} does not exist: create it or pass --articles DIR")
    return root


def find_article_files(articles_dir: str | Path) -> list[Path]:
    """Every article file (.txt, .md, .html, .htm) under `articles_dir`, recursively, sorted, ignoring hidden files."""
    root = require_folder(articles_dir)
    return sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in ARTICLE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def check_article_bytes(data: bytes) -> str:
    """The text of an article file's bytes: UTF-8 as `read_text(encoding="utf-8")` gives it; UTF-16 with its byte
    order mark; any other encoding (Latin-1, Windows-1252, ...) as charset-normalizer detects it. Newlines are made
    "\\n". Raises ValueError saying why the bytes are not a usable article (files in the folder and uploads alike)."""
    _check_present(data)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        decoded = _decoded(data, "utf-16")
    else:
        if b"\x00" in data:
            raise ValueError("not a text file (contains NUL bytes)")
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError:
            decoded = _detected(data)
    return decoded.replace("\r\n", "\n").replace("\r", "\n")  # what read_text's universal newlines do


def _decoded(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(f"not valid {encoding} (byte {error.start}); re-save it as UTF-8") from None


def _detected(data: bytes) -> str:
    """Text in an encoding other than UTF-8: Windows-1252 (which Latin-1 files read as too) when the text is in the
    Latin script and reads cleanly in it, as browsers default for Western text; otherwise the encoding
    charset-normalizer detects (it guesses poorly among Latin encodings on a short story, well between scripts)."""
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    western = _western(data)
    if western is not None and (best is None or _latin_script(str(best))):
        return western
    if best is None:
        raise ValueError("not text in any encoding qa recognises; re-save it as UTF-8")
    logger.info("read as %s", best.encoding)
    return str(best)


def _western(data: bytes) -> str | None:
    """The bytes read as Windows-1252 if every character that is not ASCII is then a letter or Western punctuation."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    return text if all(c.isascii() or c.isalpha() or c in WESTERN_PUNCTUATION for c in text) else None


def _latin_script(text: str) -> bool:
    return all("LATIN" in unicodedata.name(c, "") for c in text if c.isalpha() and not c.isascii())


def article_text(path: str | Path) -> str:
    """The text qa reads in an article file, to which every citation's offsets refer: for .txt and .md, the file's
    text in its encoding (see check_article_bytes; UTF-8 as `read_text(encoding="utf-8")` gives it); for a saved web page (.html, .htm), the article that
    trafilatura extracts from it (title, date, byline, story paragraphs), never its menus, lists or footer."""
    path = Path(path)
    return text_of(path.read_bytes(), path.suffix)


def text_of(data: bytes, suffix: str) -> str:
    """The article text of a file's bytes (see `article_text`); raises ValueError saying why they are not usable."""
    if suffix.lower() not in PAGE_SUFFIXES:
        return check_article_bytes(data)
    _check_present(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _page_texts:
        if len(_page_texts) >= MAX_REMEMBERED_PAGES:
            _page_texts.clear()
        _page_texts[digest] = _extract_page(data)
    return _page_texts[digest]


def _extract_page(data: bytes) -> str:
    """The article of a saved news page, as text: its title, date and byline on lines of their own, then its
    paragraphs, separated by blank lines. trafilatura finds the article and leaves navigation, related-story lists,
    cookie banners and footers out."""
    import trafilatura

    document = trafilatura.bare_extraction(
        data, with_metadata=True, include_comments=False, include_tables=False, favor_precision=True
    )
    lines = [line.strip() for line in (document.text or "").splitlines() if line.strip()] if document else []
    if not lines:
        raise ValueError("no article found in the web page")
    title = (document.title or "").strip() or lines[0]
    if lines[0] == title:
        lines = lines[1:]
    byline = ", ".join(part for part in (f"By {document.author}" if document.author else "", document.sitename or "") if part)
    header = [title, *([document.date] if document.date else []), *([byline] if byline else [])]
    return "\n\n".join([*header, *lines]) + "\n"


def page_source(data: bytes) -> str | None:
    """The source URL recorded at the top of a saved page's bytes, if any."""
    match = _SOURCE_LINE.search(data[:SOURCE_HEAD_BYTES])
    return match.group(1).decode("utf-8", "replace") if match else None


def article_source(path: str | Path) -> str | None:
    """The URL an article file was fetched from (saved web pages only), or None."""
    path = Path(path)
    if path.suffix.lower() not in PAGE_SUFFIXES:
        return None
    try:
        with path.open("rb") as file:
            return page_source(file.read(SOURCE_HEAD_BYTES))
    except OSError:
        return None


_page_texts: dict[str, str] = {}
MAX_REMEMBERED_PAGES = 1_000
"""Extracted pages remembered by content hash: a citation is checked against its page at every answer."""


def _read_article_bytes(path: Path, root: Path) -> bytes:
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        raise ValueError("a link to a file outside the articles folder; copy the file in instead")
    _check_size(path.stat().st_size)  # before reading: a 20 MB dump is refused without loading it
    return path.read_bytes()


def _check_present(data: bytes) -> None:
    """Raise ValueError for a file too large to be an article, or one with nothing in it."""
    _check_size(len(data))
    if not data.strip():
        raise ValueError("empty file")


def _check_size(size: int) -> None:
    if size > MAX_ARTICLE_BYTES:
        raise ValueError(f"larger than {MAX_ARTICLE_BYTES // 1_000_000} MB; split it into articles")


def parse_article(text: str, path: str, sha256: str) -> Article:
    """Split an article's text into metadata and story paragraphs, leaving page furniture out."""
    lines = _lines(text)
    content = [i for i, (start, end) in enumerate(lines) if text[start:end].strip()]
    if not content:
        raise ValueError("no text")
    title_line = content[0]
    furniture = _furniture_lines(text, lines, after=title_line)
    title = text[slice(*lines[title_line])].strip().lstrip("#").strip()
    date, date_line = _find_date(text, lines, content)
    paragraphs = []
    dateline = None
    for i in content:
        if i in furniture or i in (title_line, date_line):
            continue
        start, end = _trimmed(text, *lines[i])
        if dateline is None and i != title_line and (match := _DATELINE.match(text[start:end])):
            dateline = match.group(1).strip()
        paragraphs.append((start, end))
    if not paragraphs:
        raise ValueError("nothing but page furniture")
    return Article(path=path, text=text, sha256=sha256, title=title, date=date, dateline=dateline, paragraphs=paragraphs)


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line, without its newline."""
    spans, start = [], 0
    for line in text.split("\n"):
        spans.append((start, start + len(line)))
        start += len(line) + 1
    return spans


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _is_separator(line: str) -> bool:
    return bool(_SEPARATOR.match(line))


def _is_link_like(line: str) -> bool:
    """A short line that reads like a headline or link: a few words and no sentence-ending punctuation."""
    line = _BULLET.sub("", line)
    return 1 <= len(line.split()) <= 30 and len(line) <= MAX_LINK_LINE_CHARS and not _SENTENCE_END.search(line)


def _is_furniture_header(line: str) -> bool:
    return len(line) <= 60 and _is_link_like(line) and bool(_FURNITURE_HEADER.search(line))


def _furniture_lines(text: str, lines: list[tuple[int, int]], after: int) -> set[int]:
    """Indexes of lines below line `after` (the title) that are page furniture: separators,
    'popular/related' lists, runs of link-like lines."""
    stripped = [text[start:end].strip() for start, end in lines]
    furniture: set[int] = {i for i, line in enumerate(stripped) if i > after and line and _is_separator(line)}
    i = after + 1
    while i < len(stripped):
        if stripped[i] and _is_furniture_header(stripped[i]):
            j = i + 1
            while j < len(stripped) and (not stripped[j] or _is_link_like(stripped[j]) or _is_separator(stripped[j])):
                j += 1
            furniture.update(range(i, j))
            i = j
        else:
            i += 1
    furniture.update(_link_runs(stripped, after + 1))
    return furniture


def _link_runs(stripped: list[str], first: int) -> set[int]:
    """Runs of at least MIN_LIST_RUN link-like lines with separator lines between them, as menus are laid out."""
    found: set[int] = set()
    i = first
    while i < len(stripped):
        if not (stripped[i] and _is_link_like(stripped[i])):
            i += 1
            continue
        j, links, separators = i, [], 0
        while j < len(stripped) and (not stripped[j] or _is_link_like(stripped[j]) or _is_separator(stripped[j])):
            if stripped[j] and _is_separator(stripped[j]):
                separators += 1
            elif stripped[j]:
                links.append(j)
            j += 1
        if len(links) >= MIN_LIST_RUN and separators >= MIN_LIST_RUN - 1:
            found.update(range(i, j))
        i = j
    return found


def _find_date(text: str, lines: list[tuple[int, int]], content: list[int]) -> tuple[str | None, int | None]:
    """The publication date line near the top: a short line that is mostly a date (and time)."""
    for i in content[1 : 1 + METADATA_SCAN_LINES]:
        line = text[slice(*lines[i])].strip()
        match = _DATE.search(line)
        if match and len(line) <= 80 and len(_DATE.sub("", line).split()) <= 5 and not line.endswith("."):
            return line, i
    return None, None


def write_atomically(target: Path, data: bytes) -> None:
    """Write a file in the articles folder through a hidden temporary file and a rename: the folder watcher never
    reads half a file, and a failed write leaves no trace."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class ArticleScan:
    """The article files of a folder: read in full where new or changed, only fingerprinted where unchanged."""

    articles: list[Article]
    """New and changed articles (every article, when nothing was indexed before)."""
    unchanged: list[str] = field(default_factory=list)
    """Paths whose content is what `indexed` says: not parsed again."""
    skipped: list[SkippedFile] = field(default_factory=list)


def read_articles(articles_dir: str | Path, indexed: Mapping[str, str] | None = None) -> ArticleScan:
    """Read the articles under `articles_dir`; unusable files are skipped with a one-line warning each.

    `indexed` maps paths to the SHA-256 of the content already indexed; those files are only hashed, not parsed.
    """
    root = Path(articles_dir)
    scan = ArticleScan(articles=[])
    for path in find_article_files(root):
        relative = path.relative_to(root).as_posix()
        try:
            data = _read_article_bytes(path, root)
            digest = hashlib.sha256(data).hexdigest()
            if indexed and indexed.get(relative) == digest:
                scan.unchanged.append(relative)
            else:
                scan.articles.append(parse_article(text_of(data, path.suffix), relative, digest))
        except (OSError, ValueError) as error:
            reason = str(error) if isinstance(error, ValueError) else error.strerror or str(error)
            logger.warning("skipped %s: %s", relative, reason)
            scan.skipped.append(SkippedFile(relative, reason))
    return scan
