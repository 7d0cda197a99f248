"""Store: where the index lives (embedded files or Milvus), behind one small interface for building and ranking."""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import config
from ..articles import Article
from ..chunks import Chunk
from ..keywords import TermCounts

MILVUS_SCHEME = "milvus:"
SERVER_SCHEMES = ("http://", "https://")
KINDS = ("chunks", "sentences")
RRF_K = 60
"""Reciprocal rank fusion's constant: a chunk scores the sum of 1 / (RRF_K + rank) over the rankings that hold it."""
FORMAT_VERSION = 3
"""Bumped when what a store holds changes meaning; an index of another version is rebuilt."""


class IndexNotFoundError(FileNotFoundError):
    """Nothing has been built in the store yet."""


class IndexCorruptError(RuntimeError):
    """The store's contents cannot be read."""


@dataclass(frozen=True)
class IndexInfo:
    """What a built index is: the encoder that embedded it, where its articles live, and its size."""

    model: str
    backend: str
    dimension: int
    built_at: str
    articles_dir: str
    n_articles: int
    n_chunks: int
    n_sentences: int
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class ArticleRecord:
    """An indexed article. `id` changes whenever the article is re-indexed; `path` is relative to the articles folder."""

    id: int
    path: str
    sha256: str
    title: str
    date: str | None
    chunks: int


@dataclass
class ChunkRows:
    """Chunks of the index, ordered by id: numpy arrays, one entry per chunk."""

    ids: np.ndarray
    article: np.ndarray
    first: np.ndarray
    """Position (in its article) of the chunk's first sentence; `last` of its last one."""
    last: np.ndarray
    vectors: np.ndarray
    """(n, dimension) float32 unit vectors."""
    terms: TermCounts
    """BM25 term counts, one row per chunk."""


@dataclass
class SentenceRows:
    """Sentences of the index, ordered by (article, position): numpy arrays and lists, one entry per sentence."""

    ids: np.ndarray
    article: np.ndarray
    position: np.ndarray
    start: np.ndarray
    """Offsets of the sentence in its article file: `file_text[start:end]` is `text` (white space aside)."""
    end: np.ndarray
    text: list[str]
    sha1: list[str]
    """SHA-1 of the lower-cased text, to skip repeated sentences."""
    vectors: np.ndarray
    """(n, dimension) float32 unit vectors pooled from the chunks holding each sentence (late chunking)."""
    standalone: np.ndarray
    """(n, dimension) unit vectors of each sentence embedded on its own, without its chunk (float16 in the embedded store)."""
    terms: TermCounts

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class KeywordStats:
    """What BM25 needs to know of all rows of one kind: their number, average length, and each term's document frequency."""

    rows: int
    average_length: float
    frequencies: np.ndarray
    """For each asked term, in order, the number of rows holding it (0 when none does)."""


@dataclass
class EmbeddedArticle:
    """An article as a build hands it to the store: its sentences, chunks and their vectors."""

    article: Article
    sentences: list[tuple[int, int, str]]
    """(start, end, text) of each sentence, in reading order."""
    chunks: list[Chunk]
    chunk_vectors: np.ndarray
    sentence_vectors: np.ndarray
    """Late-chunked: pooled from the chunks holding each sentence."""
    standalone_vectors: np.ndarray
    """Each sentence embedded on its own."""


@dataclass
class Update:
    """One build's changes, applied all at once: articles to drop (by path) and articles to add."""

    model: str
    backend: str
    articles_dir: str
    removed: list[str]
    added: Iterable[EmbeddedArticle]
    """Read once, in order. A store may write each article as it arrives (Milvus does: a build on Ray streams its
    articles in while it embeds the rest); readers still see none of them until the whole update is written."""
    rebuild: bool = False
    """Drop everything the store holds before adding."""


class IndexReader(ABC):
    """One live state of the index, read-only: what a question is answered from. Later builds never change it."""

    info: IndexInfo
    generation: str
    """Names this state; a reader of another generation is another state."""

    @abstractmethod
    def search(
        self, vector: np.ndarray, text: str, terms: Sequence[str], depth: int, limit: int,
        articles: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Ids of the `limit` best chunks by reciprocal rank fusion of the `depth` nearest by vector and the `depth`
        best by BM25 (`terms` as qa tokenises `text`; an engine may analyse `text` itself), best first; only chunks
        of `articles` when it is given (a question's scope)."""

    @abstractmethod
    def keyword_search(
        self, text: str, terms: Sequence[str], depth: int, articles: Sequence[int] | None = None
    ) -> np.ndarray:
        """Ids of the (at most) `depth` chunks that best match by BM25 alone, best first; none that match nothing;
        only chunks of `articles` when it is given."""

    @abstractmethod
    def chunks(self, ids: Sequence[int] | None = None, articles: Sequence[int] | None = None) -> ChunkRows:
        """The chunks with these ids, or all chunks of these articles."""

    @abstractmethod
    def sentences(self, spans: Sequence[tuple[int, int, int]]) -> SentenceRows:
        """The sentences of each (article id, first position, last position) span, each once."""

    @abstractmethod
    def keyword_stats(self, kind: str, terms: Sequence[str]) -> KeywordStats:
        """BM25 statistics of `kind` ("chunks" or "sentences") over the whole index, for `terms`."""

    @abstractmethod
    def article(self, article_id: int) -> ArticleRecord:
        """The article with this id."""

    @abstractmethod
    def article_id(self, path: str) -> int | None:
        """The id of the article at `path` (relative to the articles folder), or None."""

    @abstractmethod
    def articles(self) -> list[ArticleRecord]:
        """Every article, ordered by path."""


class Store(ABC):
    """Where an index lives. Builds write to it through `write`; questions read the state `open` returns."""

    location: str

    @abstractmethod
    def live(self) -> str | None:
        """The name of the generation that answers now, or None when nothing has been built."""

    @abstractmethod
    def open(self) -> IndexReader:
        """A reader of the live generation; raises IndexNotFoundError when nothing has been built."""

    @abstractmethod
    def info(self) -> IndexInfo | None:
        """What the live index is, or None when nothing has been built."""

    @abstractmethod
    def hashes(self) -> dict[str, str]:
        """The SHA-256 of every live article's file, by path."""

    @abstractmethod
    def write(self, update: Update, progress: Callable[[str], None] | None = None) -> None:
        """Apply `update` so that readers see all of it or none of it; a build killed part-way leaves the live
        generation answering, and the next write clears what it left. One write at a time per store."""


def open_store(store: str | os.PathLike | None = None, index_dir: str | os.PathLike | None = None) -> Store:
    """The store at `config.store_location(store, index_dir)`, one instance per location and process."""
    location = config.store_location(store, index_dir)
    with _stores_lock:
        if location not in _stores:
            if location.startswith((MILVUS_SCHEME, *SERVER_SCHEMES)):
                from .milvus import MilvusStore

                _stores[location] = MilvusStore(location)
            else:
                from .embedded import EmbeddedStore

                _stores[location] = EmbeddedStore(Path(location))
        return _stores[location]


_stores_lock = threading.Lock()
_stores: dict[str, Store] = {}
