"""Milvus store: the index in Milvus (a Milvus Lite file or a server), generations switched by one state row."""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..keywords import TermCounts, tokenize
from . import (
    FORMAT_VERSION,
    KINDS,
    MILVUS_SCHEME,
    RRF_K,
    SERVER_SCHEMES,
    ArticleRecord,
    ChunkRows,
    EmbeddedArticle,
    IndexCorruptError,
    IndexInfo,
    IndexNotFoundError,
    IndexReader,
    KeywordStats,
    SentenceRows,
    Store,
    Update,
)

logger = logging.getLogger(__name__)

PREFIX_ENV = "QA_MILVUS_PREFIX"
TOKEN_ENV = "QA_MILVUS_TOKEN"
DEFAULT_PREFIX = "qa"
LITE_SUFFIX = ".db"
LITE_NAME = re.compile(r"^[A-Za-z0-9.\-_]{1,36}$")
"""What milvus-lite accepts as a file name: these characters, at most 36 of them."""
LITE_LOGS_SUFFIX = ".logs"
LITE_BUSY_SECONDS = 5.0
"""How long to wait for a Milvus Lite file that another process is letting go of (a build that just ended)."""
LITE_GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": False}
"""pymilvus pings every 10 s even when no call is open; Milvus Lite's server takes that for abuse after a few idle
minutes and logs a GOAWAY error (too_many_pings) on the next call. Over a local socket no ping is needed while idle."""
PREFIX_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,100}$")
INSTALL_HINT = "pip install 'qa[milvus]'"

LAYOUT_VERSION = 2
"""What these collections hold and how; a store of another layout reads as another format, so builds re-embed it.
Layout 2 keeps the sentences' standalone vectors as float16, as the embedded store does."""
DATA_COLLECTIONS = ("articles", "chunks", "sentences", "terms")
STATE_COLLECTION = "state"
OTHER_SET_SUFFIX = "_b"
"""Collections are re-created (another dimension, format or layout) beside the live ones, under this suffix or
without it, so the live index answers until the state row switches to them."""
STATE_ID = 0
RETIRED_INLINE = 4_000
"""More retired article ids than this go into extra state rows: a JSON field holds at most 65,536 bytes on a server."""
RETIRED_ROW_SPAN = 1 << 20
"""Extra state rows of build G have ids G * RETIRED_ROW_SPAN + 1, + 2, ..."""

INSERT_BATCH = 1_000
READ_BATCH = 4_096
"""Rows a query may return: well under Milvus's result window of 16,384, which it cuts at without an error."""
TERMS_BATCH = 1_000
FIRST_IDS = {"articles": 1, "chunks": 1, "sentences": 1}
MAX_TOP_K = 16_384
MAX_VARCHAR_BYTES = 65_535
SHORT_VARCHAR_BYTES = 1_024
DUMMY_DIM = 2
"""Milvus wants a vector field in every collection; the articles, terms and state collections carry this one."""
DUMMY_VECTOR = [0.0] * DUMMY_DIM
ANALYZER = {"type": "english"}
BM25_FUNCTION = "chunk_bm25"
DENSE_METRIC = "IP"
CONSISTENCY = "Strong"
NO_CHUNKS_MESSAGE = "no article text to index: add .txt, .md or .html articles to the articles folder"


class MilvusError(RuntimeError):
    """Milvus could not be reached or refused a request."""


# ---------------------------------------------------------------------------------------------------------------
# Connections: one client per location and process (Milvus Lite serves one process per file)


@dataclass
class _Connection:
    client: Any
    lite_file: Path | None
    loaded: set[str] = field(default_factory=set)


_connections_lock = threading.Lock()
_connections: dict[str, _Connection] = {}
_read_locations: set[str] = set()
"""Locations this process has opened readers of: it keeps their Milvus Lite files open."""


@dataclass(frozen=True)
class _Target:
    """Where a location points: a Milvus Lite file, or a server's URI."""

    lite_file: Path | None
    uri: str

    @classmethod
    def parse(cls, location: str) -> _Target:
        if location.startswith(SERVER_SCHEMES):
            return cls(None, location)
        if not location.startswith(MILVUS_SCHEME):
            raise ValueError(f"store {location!r} is not milvus:PATH or http(s)://HOST:PORT")
        path = location[len(MILVUS_SCHEME):]
        example = "e.g. milvus:index/qa.db"
        if not path.strip():
            raise ValueError(f"store {location!r} names no Milvus Lite file: use milvus:PATH, {example}")
        lite_file = Path(path).expanduser().absolute()
        if lite_file.suffix != LITE_SUFFIX:
            raise ValueError(f"store {location!r}: a Milvus Lite file name must end in {LITE_SUFFIX}, {example}")
        if not LITE_NAME.match(lite_file.name):
            raise ValueError(
                f"store {location!r}: Milvus Lite wants a file name of at most 36 letters, digits, '.', '-' or '_', "
                f"{example}"
            )
        return cls(lite_file, str(lite_file))


def _pymilvus():
    """The pymilvus module, imported on first use so that `import qa` does without it."""
    try:
        import pymilvus
    except ImportError:
        raise MilvusError(f"the Milvus store needs pymilvus and milvus-lite: {INSTALL_HINT}") from None
    return pymilvus


def _connect(location: str, target: _Target) -> _Connection:
    with _connections_lock:
        connection = _connections.get(location)
        if connection is None:
            connection = _Connection(_new_client(location, target), target.lite_file)
            _connections[location] = connection
        return connection


def _new_client(location: str, target: _Target):
    pymilvus = _pymilvus()
    if target.lite_file is None:
        try:
            return pymilvus.MilvusClient(uri=target.uri, token=os.environ.get(TOKEN_ENV, ""))
        except pymilvus.MilvusException as error:
            raise MilvusError(
                f"cannot reach Milvus at {location} ({_message(error)}): start the server, check the address, "
                f"or set ${TOKEN_ENV}"
            ) from None
    lite_file = target.lite_file
    try:
        with warnings.catch_warnings():  # milvus-lite 2.5 warns on import that pkg_resources is deprecated
            warnings.simplefilter("ignore", UserWarning)
            from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        raise MilvusError(f"a milvus:PATH store needs milvus-lite: {INSTALL_HINT}") from None
    lite_file.parent.mkdir(parents=True, exist_ok=True)
    logs = lite_file.with_name(lite_file.name + LITE_LOGS_SUFFIX)
    logs.mkdir(exist_ok=True)
    os.environ.setdefault("GLOG_log_dir", str(logs))  # milvus-lite's C++ logs, which would go to /tmp
    os.environ.setdefault("RUST_LOG", "error")  # its tantivy analyzer prints INFO lines to stderr otherwise
    _wait_for_lite_file(location, lite_file, server_manager_instance)
    try:
        return pymilvus.MilvusClient(str(lite_file), grpc_options=LITE_GRPC_OPTIONS)
    except pymilvus.MilvusException as error:
        raise MilvusError(f"cannot open the Milvus Lite file of {location} ({_message(error)})") from None


def _wait_for_lite_file(location: str, lite_file: Path, server_manager_instance: Any) -> None:
    """Wait briefly while another process holds the file (Milvus Lite's own lock); fail saying so after that."""
    if str(lite_file.resolve()) in getattr(server_manager_instance, "_servers", {}):
        return  # this process serves it already; testing the lock here would release it
    lock_path = lite_file.parent / f".{lite_file.name}.lock"
    deadline = time.monotonic() + LITE_BUSY_SECONDS
    while True:
        with open(lock_path, "a") as handle:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(handle, fcntl.LOCK_UN)
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise MilvusError(
                f"the Milvus Lite file of {location} is open in another process (Milvus Lite serves one process at "
                "a time): wait for it to end, or use a Milvus server (--store http://HOST:PORT)"
            )
        time.sleep(0.1)


def _disconnect(location: str) -> None:
    """Close the client of `location` and, for a Milvus Lite file, stop its server so another process can open it."""
    with _connections_lock:
        connection = _connections.pop(location, None)
    if connection is None:
        return
    connection.client.close()
    if connection.lite_file is not None:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(connection.lite_file))


def _message(error: Exception) -> str:
    """The first line of what Milvus said."""
    text = str(getattr(error, "message", "") or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _translated(method: Callable) -> Callable:
    """Turn pymilvus's exceptions into a MilvusError that says where and what to do."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            pymilvus = sys.modules.get("pymilvus")
            if pymilvus is None or not isinstance(error, pymilvus.MilvusException):
                raise
            raise MilvusError(
                f"Milvus at {self.location} failed ({_message(error)}); if it persists, rebuild the index with "
                f"`qa index --rebuild --store {self.location}`"
            ) from None

    return wrapper


# ---------------------------------------------------------------------------------------------------------------
# The state row


@dataclass
class _State:
    """What the state row holds: the live build and everything a reader of it needs to see exactly its rows."""

    build: int
    info: IndexInfo
    layout: int = LAYOUT_VERSION
    collection_set: int = 0
    base: int = 1
    """Build of the last full rebuild: term rows written before it count as zero."""
    floor: int = 0
    """Articles with lower ids are retired (all of them, by a rebuild beside the old rows)."""
    retired: list[int] = field(default_factory=list)
    retired_rows: list[int] = field(default_factory=list)
    """Ids of extra state rows holding more retired ids (when there are more than RETIRED_INLINE)."""
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    lengths: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    """Total qa tokens of each kind's live rows."""
    next_ids: dict[str, int] = field(default_factory=lambda: dict(FIRST_IDS))

    @property
    def generation(self) -> str:
        return f"build-{self.build}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> _State:
        values = dict(data)
        values["info"] = IndexInfo(**values["info"])
        return cls(**{key: values[key] for key in (f.name for f in dataclasses.fields(cls)) if key in values})


@dataclass(frozen=True)
class _ArticleRow:
    id: int
    path: str
    sha256: str
    title: str
    date: str | None
    chunk_first: int
    chunks: int
    sentence_first: int
    sentences: int
    chunk_tokens: int
    sentence_tokens: int

    FIELDS = ("id", "path", "sha256", "title", "date", "chunk_first", "chunks", "sentence_first", "sentences",
              "chunk_tokens", "sentence_tokens")

    @classmethod
    def of(cls, row: dict) -> _ArticleRow:
        values = {name: row[name] for name in cls.FIELDS}
        values["date"] = values["date"] or None
        return cls(**values)

    def record(self) -> ArticleRecord:
        return ArticleRecord(self.id, self.path, self.sha256, self.title, self.date, self.chunks)

    def ids(self, kind: str, first: int = 0, last: int | None = None) -> range:
        """Ids of this article's chunks or sentences (positions `first` to `last`): each article's are consecutive."""
        start, count = (self.chunk_first, self.chunks) if kind == "chunks" else (self.sentence_first, self.sentences)
        last = count - 1 if last is None else min(last, count - 1)
        return range(start + max(first, 0), start + last + 1)


def _visible(build: int, floor: int, retired: Sequence[int]) -> str:
    """The filter that shows a reader of `build` exactly its rows."""
    clauses = [f"added_in <= {build}"]
    if floor:
        clauses.append(f"article >= {floor}")
    if retired:
        clauses.append(f"article not in {sorted(set(retired))}")
    return " and ".join(clauses)


def _within(visible: str, articles: Sequence[int] | None) -> str:
    """`visible`, limited to the chunks of `articles` when given (a question's scope)."""
    return visible if articles is None else f"{visible} and article in {sorted(int(a) for a in articles)}"


def _literal(text: str) -> str:
    """A string literal for a Milvus filter expression."""
    return json.dumps(text, ensure_ascii=False)


def _fit(text: str, limit: int = MAX_VARCHAR_BYTES) -> str:
    """`text`, cut to at most `limit` UTF-8 bytes (Milvus's VARCHAR limit)."""
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


def _joined_tokens(tokens: Sequence[str]) -> str:
    """qa's BM25 terms of a text, space-joined as stored; cut at a term boundary if over the VARCHAR limit."""
    joined = " ".join(tokens)
    if len(joined.encode("utf-8")) <= MAX_VARCHAR_BYTES:
        return joined
    logger.warning("a text has more BM25 terms than a Milvus field holds; its last terms are left out")
    return _fit(joined).rsplit(" ", 1)[0]


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------------------------------
# The store


class MilvusStore(Store):
    """An index in Milvus: collections `{prefix}_articles`, `_chunks`, `_sentences`, `_terms` (or the same names
    ending in `_b`, when a build had to create them anew beside the live ones) and `{prefix}_state`.

    Every row carries the build that wrote it (`added_in`) and its article id; the one state row names the live
    build G, the articles it retired and the collection set. A reader of G filters everything by
    `added_in <= G and article not in [retired]`, so a build writes its rows beside the live ones and switches by
    upserting the state row; rows nobody can see any more (a killed build's, the retired articles') are deleted by
    the next build. Term document frequencies are kept per term, with the value before the last build beside the
    current one, so readers of the live build (and of the one before) read exact statistics; an older reader may
    read a later build's frequencies.

    Milvus Lite serves one process per file: a process that has only written (no reader opened) lets go of the
    file when its write is done, so that other processes can open it. One write at a time per store: a lock here
    for one process; a Milvus server has no lock to take, so run one build at a time against it.
    """

    def __init__(self, location: str):
        self.location = location
        self._target = _Target.parse(location)
        prefix = os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX
        if not PREFIX_PATTERN.match(prefix):
            raise ValueError(
                f"${PREFIX_ENV}={prefix!r} cannot start a Milvus collection name: use letters, digits and "
                "underscores, starting with a letter"
            )
        self.prefix = prefix
        self._write_lock = threading.Lock()
        self._state_exists = False

    # -- Store ---------------------------------------------------------------------------------------------------

    @_translated
    def live(self) -> str | None:
        state = self._read_state()
        return state.generation if state is not None else None

    @_translated
    def open(self) -> MilvusReader:
        state = self._read_state()
        if state is None:
            raise IndexNotFoundError(
                f"no index in {self.location!r}: build it with `qa index --store {self.location}`"
            )
        with _connections_lock:
            _read_locations.add(self.location)
        return MilvusReader(self, state)

    @_translated
    def info(self) -> IndexInfo | None:
        state = self._read_state()
        if state is None:
            return None
        if state.layout != LAYOUT_VERSION:  # the build code then re-embeds everything, as for another format
            return dataclasses.replace(state.info, format_version=0)
        return state.info

    @_translated
    def hashes(self) -> dict[str, str]:
        state = self._read_state()
        if state is None:
            return {}
        visible = _visible(state.build, state.floor, self._retired(state))
        return {row.path: row.sha256 for row in self._live_articles(state, visible)}

    @_translated
    def write(self, update: Update, progress: Callable[[str], None] | None = None) -> None:
        with self._write_lock:
            try:
                _Build(self, update, progress).run()
            finally:
                if self._target.lite_file is not None and self.location not in _read_locations:
                    _disconnect(self.location)

    # -- shared with readers and builds ------------------------------------------------------------------------

    def client(self):
        return _connect(self.location, self._target).client

    def name(self, collection: str, collection_set: int = 0) -> str:
        suffix = OTHER_SET_SUFFIX if collection_set and collection != STATE_COLLECTION else ""
        return f"{self.prefix}_{collection}{suffix}"

    def ensure_loaded(self, name: str) -> None:
        """Load a collection once per connection (a server keeps a collection unloaded after a restart)."""
        connection = _connect(self.location, self._target)
        if name in connection.loaded:
            return
        pymilvus = _pymilvus()
        state = connection.client.get_load_state(name).get("state")
        if state != pymilvus.client.types.LoadState.Loaded:
            connection.client.load_collection(name)
        connection.loaded.add(name)

    def query(self, collection: str, filter: str, fields: Sequence[str], collection_set: int = 0) -> list[dict]:
        name = self.name(collection, collection_set)
        self.ensure_loaded(name)
        return list(self.client().query(name, filter=filter, output_fields=list(fields)))

    def query_ids(
        self, collection: str, ids: Iterable[int], fields: Sequence[str], collection_set: int,
        visible: str | None = None,
    ) -> list[dict]:
        """The rows with these ids (and, if given, matching `visible`), in batches under the result window."""
        wanted = sorted(set(int(i) for i in ids))
        rows: list[dict] = []
        for batch in _batches(wanted, READ_BATCH):
            condition = f"id in {list(batch)}" + (f" and {visible}" if visible else "")
            rows.extend(self.query(collection, condition, fields, collection_set))
        return rows

    def _read_state(self) -> _State | None:
        name = self.name(STATE_COLLECTION)
        if not self._state_exists:
            if not self.client().has_collection(name):
                return None
            self._state_exists = True
        rows = self.query(STATE_COLLECTION, f"id == {STATE_ID}", ["state"])
        if not rows:
            return None
        try:
            return _State.from_json(rows[0]["state"])
        except (KeyError, TypeError, ValueError) as error:
            raise IndexCorruptError(
                f"the state row of {self.location} is unreadable ({error}); run `qa index --rebuild --store "
                f"{self.location}`"
            ) from None

    def _retired(self, state: _State) -> list[int]:
        """All article ids the state's build retired: inline, and in the extra state rows it names."""
        retired = list(state.retired)
        if state.retired_rows:
            for row in self.query(STATE_COLLECTION, f"id in {state.retired_rows}", ["state"]):
                retired.extend(row["state"]["retired"])
        return retired

    def _live_articles(self, state: _State, visible: str) -> list[_ArticleRow]:
        """Every article matching `visible` (a reader of `state`'s filter), in id windows under the result window."""
        rows: list[_ArticleRow] = []
        first = max(state.floor, 1)
        for start in range(first, state.next_ids["articles"], READ_BATCH):
            condition = f"id >= {start} and id < {start + READ_BATCH} and {visible}"
            rows.extend(_ArticleRow.of(row) for row in self.query(
                "articles", condition, _ArticleRow.FIELDS, state.collection_set))
        return rows


# ---------------------------------------------------------------------------------------------------------------
# Reading


class MilvusReader(IndexReader):
    """The live build of a Milvus store when it was opened: every query and search filtered to that build's rows.
    Article rows (which never change under an id) are remembered as they are read."""

    def __init__(self, store: MilvusStore, state: _State):
        self._store = store
        self.location = store.location
        self._state = state
        self.info = state.info
        self.generation = state.generation
        self._set = state.collection_set
        self._visible = _visible(state.build, state.floor, store._retired(state))
        self._articles: dict[int, _ArticleRow | None] = {}
        self._by_path: dict[str, int | None] = {}
        self._frequencies: dict[str, tuple[int, int]] = {}

    @_translated
    def search(
        self, vector: np.ndarray, text: str, terms: Sequence[str], depth: int, limit: int,
        articles: Sequence[int] | None = None,
    ) -> np.ndarray:
        depth, limit = min(int(depth), MAX_TOP_K), min(int(limit), MAX_TOP_K)
        visible = _within(self._visible, articles)
        if depth <= 0 or limit <= 0:
            return np.zeros(0, dtype=np.int64)
        pymilvus = _pymilvus()
        requests = [
            pymilvus.AnnSearchRequest(
                data=[np.asarray(vector, dtype=np.float32).tolist()], anns_field="vector",
                param={"metric_type": DENSE_METRIC}, limit=depth, expr=visible,
            ),
            pymilvus.AnnSearchRequest(
                data=[text], anns_field="sparse", param={"metric_type": "BM25"}, limit=depth, expr=visible,
            ),
        ]
        name = self._store.name("chunks", self._set)
        self._store.ensure_loaded(name)
        hits = self._store.client().hybrid_search(name, requests, pymilvus.RRFRanker(RRF_K), limit=limit)
        return np.array([hit["id"] for hit in hits[0]], dtype=np.int64)

    @_translated
    def keyword_search(
        self, text: str, terms: Sequence[str], depth: int, articles: Sequence[int] | None = None
    ) -> np.ndarray:
        depth = min(int(depth), MAX_TOP_K)
        if depth <= 0 or not text.strip():
            return np.zeros(0, dtype=np.int64)
        name = self._store.name("chunks", self._set)
        self._store.ensure_loaded(name)
        hits = self._store.client().search(
            name, data=[text], anns_field="sparse", search_params={"metric_type": "BM25"}, limit=depth,
            filter=_within(self._visible, articles),
        )
        return np.array([hit["id"] for hit in hits[0] if hit["distance"] > 0], dtype=np.int64)

    @_translated
    def chunks(self, ids: Sequence[int] | None = None, articles: Sequence[int] | None = None) -> ChunkRows:
        if ids is None:
            wanted: list[int] = []
            for row in self._article_rows(articles or []).values():
                wanted.extend(row.ids("chunks"))
        else:
            wanted = [int(i) for i in ids]
        rows = self._store.query_ids(
            "chunks", wanted, ["id", "article", "first", "last", "tokens", "vector"], self._set, self._visible)
        rows.sort(key=lambda row: row["id"])
        return ChunkRows(
            ids=np.array([row["id"] for row in rows], dtype=np.int64),
            article=np.array([row["article"] for row in rows], dtype=np.int64),
            first=np.array([row["first"] for row in rows], dtype=np.int64),
            last=np.array([row["last"] for row in rows], dtype=np.int64),
            vectors=self._vectors(rows),
            terms=TermCounts.from_tokens([row["tokens"].split() for row in rows]),
        )

    @_translated
    def sentences(self, spans: Sequence[tuple[int, int, int]]) -> SentenceRows:
        found = self._article_rows([article for article, _, _ in spans])
        wanted: set[int] = set()
        for article, first, last in spans:
            row = found.get(int(article))
            if row is not None:
                wanted.update(row.ids("sentences", int(first), int(last)))
        rows = self._store.query_ids(
            "sentences", wanted,
            ["id", "article", "position", "start", "end", "text", "sha1", "tokens", "vector", "standalone"],
            self._set, self._visible,
        )
        rows.sort(key=lambda row: (row["article"], row["position"]))
        return SentenceRows(
            ids=np.array([row["id"] for row in rows], dtype=np.int64),
            article=np.array([row["article"] for row in rows], dtype=np.int64),
            position=np.array([row["position"] for row in rows], dtype=np.int64),
            start=np.array([row["start"] for row in rows], dtype=np.int64),
            end=np.array([row["end"] for row in rows], dtype=np.int64),
            text=[row["text"] for row in rows],
            sha1=[row["sha1"] for row in rows],
            vectors=self._vectors(rows),
            standalone=self._half_vectors(rows, "standalone"),
            terms=TermCounts.from_tokens([row["tokens"].split() for row in rows]),
        )

    @_translated
    def keyword_stats(self, kind: str, terms: Sequence[str]) -> KeywordStats:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        column = KINDS.index(kind)
        missing = [term for term in dict.fromkeys(terms) if term not in self._frequencies]
        for batch in _batches(missing, TERMS_BATCH):
            rows = self._store.query(
                "terms", f"term in [{', '.join(_literal(t) for t in batch)}]", _TERM_FIELDS, self._set)
            for row in rows:
                self._frequencies[row["term"]] = _frequencies_at(row, self._state.build, self._state.base)
            for term in batch:
                self._frequencies.setdefault(term, (0, 0))
        rows, length = self._state.rows[kind], self._state.lengths[kind]
        return KeywordStats(
            rows=rows,
            average_length=length / rows if rows and length > 0 else 1.0,
            frequencies=np.array([self._frequencies[t][column] for t in terms], dtype=np.int64),
        )

    @_translated
    def article(self, article_id: int) -> ArticleRecord:
        row = self._article_rows([article_id]).get(int(article_id))
        if row is None:
            raise KeyError(f"no article {article_id} in {self.generation} of {self.location}")
        return row.record()

    @_translated
    def article_id(self, path: str) -> int | None:
        if path not in self._by_path:
            if path.isprintable():
                rows = self._store.query(
                    "articles", f"path == {_literal(path)} and {self._visible}", _ArticleRow.FIELDS, self._set)
                found = [_ArticleRow.of(row) for row in rows]
            else:  # a path no filter literal can spell: look through every article
                found = [row for row in self._store._live_articles(self._state, self._visible) if row.path == path]
            for row in found:
                self._articles[row.id] = row
            self._by_path[path] = found[0].id if found else None
        return self._by_path[path]

    @_translated
    def articles(self) -> list[ArticleRecord]:
        rows = self._store._live_articles(self._state, self._visible)
        for row in rows:
            self._articles[row.id] = row
        return sorted((row.record() for row in rows), key=lambda record: record.path)

    def _article_rows(self, article_ids: Iterable[int]) -> dict[int, _ArticleRow]:
        wanted = set(int(a) for a in article_ids)
        missing = [a for a in wanted if a not in self._articles]
        if missing:
            rows = self._store.query_ids("articles", missing, _ArticleRow.FIELDS, self._set, self._visible)
            for row in rows:
                self._articles[row["id"]] = _ArticleRow.of(row)
            for article in missing:
                self._articles.setdefault(article, None)
        return {a: self._articles[a] for a in wanted if self._articles[a] is not None}

    def _vectors(self, rows: list[dict]) -> np.ndarray:
        if not rows:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        return np.array([row["vector"] for row in rows], dtype=np.float32)

    def _half_vectors(self, rows: list[dict], field: str) -> np.ndarray:
        """A FLOAT16_VECTOR field of the rows: pymilvus returns each vector as its bytes, in a one-item list."""
        if not rows:
            return np.zeros((0, self.info.dimension), dtype=np.float16)
        return np.frombuffer(b"".join(row[field][0] for row in rows), dtype=np.float16).reshape(len(rows), -1)


_TERM_FIELDS = ["term", "build", "df_chunks", "df_sentences", "prev_chunks", "prev_sentences"]


def _frequencies_at(row: dict, build: int, base: int) -> tuple[int, int]:
    """A term row's (chunk, sentence) document frequencies as a reader of `build` (last rebuilt at `base`) sees
    them: its current values if written by that build or before (zero if before the rebuild), else the values
    before the build that wrote it."""
    if row["build"] <= build:
        return (row["df_chunks"], row["df_sentences"]) if row["build"] >= base else (0, 0)
    return row["prev_chunks"], row["prev_sentences"]


# ---------------------------------------------------------------------------------------------------------------
# Writing


@dataclass
class _Terms:
    """What the term frequencies need of a set of rows, per kind: how many, their total length in terms, and each
    term's document frequency."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    lengths: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    frequencies: dict[str, Counter] = field(default_factory=lambda: {kind: Counter() for kind in KINDS})

    def count(self, kind: str, token_strings: Sequence[str]) -> None:
        self.rows[kind] += len(token_strings)
        self.lengths[kind] += _length(token_strings)
        for tokens in token_strings:
            self.frequencies[kind].update(set(tokens.split()))


@dataclass
class _Added:
    """What a build inserted: the paths of its articles, and the terms of its chunks and sentences."""

    paths: set[str] = field(default_factory=set)
    terms: _Terms = field(default_factory=_Terms)

    @property
    def articles(self) -> int:
        return len(self.paths)


class _Build:
    """One write: clear what earlier builds left, insert the new rows beside the live ones, update term frequencies,
    and switch by upserting the state row. Until that upsert, readers of the live build see nothing of it."""

    def __init__(self, store: MilvusStore, update: Update, progress: Callable[[str], None] | None):
        self.store = store
        self.client = store.client()
        self.update = update
        self.progress = progress

    def say(self, message: str) -> None:
        logger.info("%s: %s", self.store.location, message)
        if self.progress is not None:
            self.progress(message)

    def run(self) -> None:
        update, store = self.update, self.store
        self.say("reading the live state")
        state = store._read_state()
        arriving = iter(update.added)
        first = next(arriving, None)
        dimension = self._dimension(state, first)
        compatible = state is not None and (
            state.layout == LAYOUT_VERSION and state.info.format_version == FORMAT_VERSION
            and state.info.dimension == dimension
        )
        same_encoder = state is not None and (state.info.model, state.info.backend) == (update.model, update.backend)
        if state is not None and not update.rebuild and not (compatible and same_encoder):
            raise ValueError(
                f"the index in {store.location} was built with {state.info.model!r} on {state.info.backend} "
                f"(format {state.info.format_version}, dimension {state.info.dimension}); an update cannot change "
                f"that: rebuild it with `qa index --rebuild --store {store.location}`"
            )
        reset = update.rebuild or state is None
        if compatible:
            target = state.collection_set
            self.say("clearing what earlier builds left")
            self._drop_set(1 - target)
            retired_before = store._retired(state)
            self._clear_leftovers(state, retired_before)
            live = [] if reset else store._live_articles(state, _visible(state.build, state.floor, retired_before))
        else:
            target = 0 if state is None else 1 - state.collection_set
            self.say("creating the collections" + (" beside the live ones" if state is not None else ""))
            if state is None:
                self._drop_set(1)
            self._drop_set(target)
            self._create_set(target, dimension)
            live = []
        self.target = target

        build = (state.build if state is not None else 0) + 1
        next_ids = dict(state.next_ids if state is not None else FIRST_IDS)
        first_article = next_ids["articles"]
        added = self._insert(build, next_ids, dimension, itertools.chain([first] if first else [], arriving))

        superseded = added.paths | set(update.removed)
        retired = [row for row in live if row.path in superseded]
        previous = state if compatible and not reset else None
        removed = self._terms_of(retired) if previous else _Terms()
        rows, lengths = {}, {}
        for kind in KINDS:
            rows[kind] = (previous.rows[kind] if previous else 0) + added.terms.rows[kind] - removed.rows[kind]
            lengths[kind] = (previous.lengths[kind] if previous else 0) + added.terms.lengths[kind] - removed.lengths[
                kind]
        if rows["chunks"] <= 0:
            raise ValueError(NO_CHUNKS_MESSAGE)

        self.say("updating term frequencies")
        self._update_terms(build, state if compatible else None, reset, added.terms, removed)
        n_articles = (previous.info.n_articles - len(retired) if previous else 0) + added.articles
        info = IndexInfo(
            model=update.model, backend=update.backend, dimension=dimension,
            built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), articles_dir=update.articles_dir,
            n_articles=n_articles, n_chunks=rows["chunks"], n_sentences=rows["sentences"],
            format_version=FORMAT_VERSION,
        )
        new_state = _State(
            build=build, info=info, collection_set=target,
            base=build if reset else state.base,
            floor=(first_article if reset else state.floor) if compatible else 0,
            rows=rows, lengths=lengths, next_ids=next_ids,
        )
        self._store_retired(new_state, [row.id for row in retired])
        self.say(f"switching to build {build}")
        self.client.upsert(store.name(STATE_COLLECTION), [{"id": STATE_ID, "state": new_state.to_json(),
                                                           "dummy": DUMMY_VECTOR}])
        logger.info("%s: build %d is live: %d articles, %d chunks, %d sentences", store.location, build,
                    n_articles, rows["chunks"], rows["sentences"])

    def _dimension(self, state: _State | None, first: EmbeddedArticle | None) -> int:
        """The dimension of the update's vectors (those of its first article), else of the live index's."""
        if first is not None:
            return first.chunk_vectors.shape[1]
        if state is None or self.update.rebuild:
            raise ValueError(NO_CHUNKS_MESSAGE)
        return state.info.dimension

    # -- collections -------------------------------------------------------------------------------------------

    def _drop_set(self, collection_set: int) -> None:
        for collection in DATA_COLLECTIONS:
            name = self.store.name(collection, collection_set)
            if self.client.has_collection(name):
                logger.info("dropping %s", name)
                self.client.drop_collection(name)
        _connect(self.store.location, self.store._target).loaded.difference_update(
            self.store.name(collection, collection_set) for collection in DATA_COLLECTIONS)

    def _create_set(self, collection_set: int, dimension: int) -> None:
        pymilvus = _pymilvus()
        DataType = pymilvus.DataType
        if not self.client.has_collection(self.store.name(STATE_COLLECTION)):
            self._create(STATE_COLLECTION, [
                ("id", DataType.INT64, {"is_primary": True}),
                ("state", DataType.JSON, {}),
            ], dummy=True)
        self._create(self.store.name("articles", collection_set), [
            ("id", DataType.INT64, {"is_primary": True}),
            ("article", DataType.INT64, {}),
            ("added_in", DataType.INT64, {}),
            ("path", DataType.VARCHAR, {"max_length": MAX_VARCHAR_BYTES}),
            ("sha256", DataType.VARCHAR, {"max_length": 64}),
            ("title", DataType.VARCHAR, {"max_length": MAX_VARCHAR_BYTES}),
            ("date", DataType.VARCHAR, {"max_length": SHORT_VARCHAR_BYTES}),
            ("dateline", DataType.VARCHAR, {"max_length": SHORT_VARCHAR_BYTES}),
            ("chunk_first", DataType.INT64, {}),
            ("chunks", DataType.INT64, {}),
            ("sentence_first", DataType.INT64, {}),
            ("sentences", DataType.INT64, {}),
            ("chunk_tokens", DataType.INT64, {}),
            ("sentence_tokens", DataType.INT64, {}),
        ], dummy=True, named=True)
        self._create(self.store.name("chunks", collection_set), [
            ("id", DataType.INT64, {"is_primary": True}),
            ("article", DataType.INT64, {}),
            ("added_in", DataType.INT64, {}),
            ("first", DataType.INT64, {}),
            ("last", DataType.INT64, {}),
            ("text", DataType.VARCHAR, {"max_length": MAX_VARCHAR_BYTES, "enable_analyzer": True,
                                        "analyzer_params": ANALYZER}),
            ("tokens", DataType.VARCHAR, {"max_length": MAX_VARCHAR_BYTES}),
            ("vector", DataType.FLOAT_VECTOR, {"dim": dimension}),
            ("sparse", DataType.SPARSE_FLOAT_VECTOR, {}),
        ], named=True, bm25=True)
        self._create(self.store.name("sentences", collection_set), [
            ("id", DataType.INT64, {"is_primary": True}),
            ("article", DataType.INT64, {}),
            ("added_in", DataType.INT64, {}),
            ("position", DataType.INT64, {}),
            ("start", DataType.INT64, {}),
            ("end", DataType.INT64, {}),
            ("text", DataType.VARCHAR, {"max_length": MAX_VARCHAR_BYTES}),
            ("sha1", DataType.VARCHAR, {"max_length": 40}),
            ("tokens", DataType.VARCHAR, {"max_length": MAX_VARCHAR_BYTES}),
            ("vector", DataType.FLOAT_VECTOR, {"dim": dimension}),
            ("standalone", DataType.FLOAT16_VECTOR, {"dim": dimension}),
        ], named=True)
        self._create(self.store.name("terms", collection_set), [
            ("term", DataType.VARCHAR, {"is_primary": True, "max_length": MAX_VARCHAR_BYTES}),
            ("build", DataType.INT64, {}),
            ("df_chunks", DataType.INT64, {}),
            ("df_sentences", DataType.INT64, {}),
            ("prev_chunks", DataType.INT64, {}),
            ("prev_sentences", DataType.INT64, {}),
        ], dummy=True, named=True)

    def _create(self, name: str, fields: list[tuple[str, Any, dict]], dummy: bool = False, named: bool = False,
                bm25: bool = False) -> None:
        pymilvus = _pymilvus()
        if not named:
            name = self.store.name(name)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        for field_name, data_type, options in fields:
            schema.add_field(field_name, data_type, **options)
        indexes = self.client.prepare_index_params()
        if dummy:
            schema.add_field("dummy", pymilvus.DataType.FLOAT_VECTOR, dim=DUMMY_DIM)
            indexes.add_index("dummy", index_type="AUTOINDEX", metric_type="L2")
        # Milvus loads a collection only when every vector field in it is indexed. The float16 field is only read,
        # never searched: FLAT, the one index Milvus Lite builds on float16.
        for field_name, data_type, _ in fields:
            if data_type == pymilvus.DataType.FLOAT_VECTOR:
                indexes.add_index(field_name, index_type="AUTOINDEX", metric_type=DENSE_METRIC)
            elif data_type == pymilvus.DataType.FLOAT16_VECTOR:
                indexes.add_index(field_name, index_type="FLAT", metric_type=DENSE_METRIC)
        if bm25:
            schema.add_function(pymilvus.Function(
                name=BM25_FUNCTION, function_type=pymilvus.FunctionType.BM25, input_field_names=["text"],
                output_field_names=["sparse"],
            ))
            indexes.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        logger.info("creating %s", name)
        self.client.create_collection(name, schema=schema, index_params=indexes, consistency_level=CONSISTENCY)

    def _clear_leftovers(self, state: _State, retired: list[int]) -> None:
        """Delete rows no reader of the live build sees: a killed build's, and those of articles it retired; put back
        the term rows a killed build changed; drop term rows from before the last rebuild."""
        gone = [f"added_in > {state.build}"]
        if state.floor:
            gone.append(f"article < {state.floor}")
        if retired:
            gone.append(f"article in {sorted(set(retired))}")
        condition = " or ".join(f"({clause})" for clause in gone)
        for collection in ("articles", "chunks", "sentences"):
            self.client.delete(self.store.name(collection, state.collection_set), filter=condition)
        extra_rows = f"id != {STATE_ID}" + (f" and id not in {list(state.retired_rows)}" if state.retired_rows else "")
        self.client.delete(self.store.name(STATE_COLLECTION), filter=extra_rows)
        terms = self.store.name("terms", state.collection_set)
        self.client.delete(terms, filter=f"build < {state.base}")
        while True:
            rows = self.store.query("terms", f"build > {state.build}", _TERM_FIELDS, state.collection_set)[:READ_BATCH]
            if not rows:
                break
            logger.info("putting back %d term frequencies a killed build changed", len(rows))
            for batch in _batches(rows, INSERT_BATCH):
                self.client.upsert(terms, [_term_row(row["term"], state.build, row["prev_chunks"],
                                                     row["prev_sentences"], row["prev_chunks"], row["prev_sentences"])
                                           for row in batch])

    # -- rows --------------------------------------------------------------------------------------------------

    def _insert(self, build: int, next_ids: dict[str, int], dimension: int,
                arriving: Iterable[EmbeddedArticle]) -> _Added:
        """Insert the articles, chunks and sentences as build `build`, as they arrive (a build on Ray streams them
        while it embeds the rest), advancing `next_ids`."""
        added = _Added()
        self.say("inserting the articles as they are embedded")
        pending: dict[str, list[dict]] = {"articles": [], "chunks": [], "sentences": []}
        inserted = 0
        for embedded in arriving:
            if embedded.chunk_vectors.shape[1] != dimension:
                raise ValueError(f"the update's vectors have dimensions {dimension} and "
                                 f"{embedded.chunk_vectors.shape[1]}: embed them all with one model")
            article = embedded.article
            article_id = next_ids["articles"]
            next_ids["articles"] += 1
            chunk_tokens = _tokens([chunk.text for chunk in embedded.chunks])
            sentence_tokens = _tokens([text for _, _, text in embedded.sentences])
            chunk_first, sentence_first = next_ids["chunks"], next_ids["sentences"]
            pending["articles"].append({
                "id": article_id, "article": article_id, "added_in": build,
                "path": _fit(article.path), "sha256": article.sha256, "title": _fit(article.title),
                "date": _fit(article.date or "", SHORT_VARCHAR_BYTES),
                "dateline": _fit(article.dateline or "", SHORT_VARCHAR_BYTES),
                "chunk_first": chunk_first, "chunks": len(embedded.chunks),
                "sentence_first": sentence_first, "sentences": len(embedded.sentences),
                "chunk_tokens": _length(chunk_tokens), "sentence_tokens": _length(sentence_tokens),
                "dummy": DUMMY_VECTOR,
            })
            chunk_vectors = np.asarray(embedded.chunk_vectors, dtype=np.float32)
            for k, chunk in enumerate(embedded.chunks):
                pending["chunks"].append({
                    "id": chunk_first + k, "article": article_id, "added_in": build, "first": chunk.first,
                    "last": chunk.last, "text": _fit(chunk.text), "tokens": chunk_tokens[k],
                    "vector": chunk_vectors[k].tolist(),
                })
            sentence_vectors = np.asarray(embedded.sentence_vectors, dtype=np.float32)
            standalone_vectors = np.asarray(embedded.standalone_vectors, dtype=np.float16)
            for position, (start, end, text) in enumerate(embedded.sentences):
                pending["sentences"].append({
                    "id": sentence_first + position, "article": article_id, "added_in": build,
                    "position": position, "start": start, "end": end, "text": _fit(text),
                    "sha1": hashlib.sha1(text.lower().encode("utf-8")).hexdigest(),
                    "tokens": sentence_tokens[position], "vector": sentence_vectors[position].tolist(),
                    "standalone": standalone_vectors[position],
                })
            next_ids["chunks"] += len(embedded.chunks)
            next_ids["sentences"] += len(embedded.sentences)
            added.paths.add(article.path)
            added.terms.count("chunks", chunk_tokens)
            added.terms.count("sentences", sentence_tokens)
            for collection, rows in pending.items():
                if len(rows) >= INSERT_BATCH:
                    inserted += self._flush(collection, rows, inserted)
        for collection, rows in pending.items():
            if rows:
                inserted += self._flush(collection, rows, inserted)
        return added

    def _flush(self, collection: str, rows: list[dict], inserted: int) -> int:
        count = len(rows)
        self.client.insert(self.store.name(collection, self.target), rows)
        rows.clear()
        self.say(f"inserted {inserted + count} rows")
        return count

    def _terms_of(self, retired: list[_ArticleRow]) -> _Terms:
        """The terms of the retired articles' chunks and sentences, from their stored token strings."""
        terms = _Terms()
        for kind in KINDS:
            ids = [i for row in retired for i in row.ids(kind)]
            terms.count(kind, [row["tokens"] for row in self.store.query_ids(kind, ids, ["tokens"], self.target)])
        return terms

    def _update_terms(self, build: int, state: _State | None, reset: bool, added: _Terms, removed: _Terms) -> None:
        """Write each touched term's new document frequencies as of `build`, keeping those of the live build beside."""
        delta = {kind: added.frequencies[kind].copy() for kind in KINDS}
        for kind in KINDS:
            delta[kind].subtract(removed.frequencies[kind])
        touched = sorted(set(delta["chunks"]) | set(delta["sentences"]))
        before: dict[str, tuple[int, int]] = {}
        if state is not None:
            for batch in _batches(touched, TERMS_BATCH):
                rows = self.store.query(
                    "terms", f"term in [{', '.join(_literal(t) for t in batch)}]", _TERM_FIELDS, self.target)
                before.update((row["term"], _frequencies_at(row, state.build, state.base)) for row in rows)
        name = self.store.name("terms", self.target)
        for batch in _batches(touched, INSERT_BATCH):
            rows = []
            for term in batch:
                old_chunks, old_sentences = before.get(term, (0, 0))
                base_chunks, base_sentences = (0, 0) if reset else (old_chunks, old_sentences)
                rows.append(_term_row(term, build, base_chunks + delta["chunks"][term],
                                      base_sentences + delta["sentences"][term], old_chunks, old_sentences))
            self.client.upsert(name, rows)

    def _store_retired(self, state: _State, retired: list[int]) -> None:
        """Put the retired ids in the state, or (when many) in extra state rows it names, written before the switch."""
        if len(retired) <= RETIRED_INLINE:
            state.retired = sorted(retired)
            return
        rows = []
        for k, batch in enumerate(_batches(sorted(retired), RETIRED_INLINE)):
            rows.append({"id": state.build * RETIRED_ROW_SPAN + k + 1, "state": {"retired": list(batch)},
                         "dummy": DUMMY_VECTOR})
        self.client.upsert(self.store.name(STATE_COLLECTION), rows)
        state.retired_rows = [row["id"] for row in rows]


def _term_row(term: str, build: int, chunks: int, sentences: int, prev_chunks: int, prev_sentences: int) -> dict:
    return {"term": term, "build": build, "df_chunks": int(chunks), "df_sentences": int(sentences),
            "prev_chunks": int(prev_chunks), "prev_sentences": int(prev_sentences), "dummy": DUMMY_VECTOR}


def _tokens(texts: list[str]) -> list[str]:
    """qa's BM25 terms of each text, space-joined as stored."""
    return [_joined_tokens(tokens) for tokens in tokenize(texts)] if texts else []


def _length(token_strings: Iterable[str]) -> int:
    return sum(len(tokens.split()) for tokens in token_strings)
