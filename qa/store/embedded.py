"""Embedded store: the index in one folder (SQLite rows, write-once segment files, FAISS), swapped in atomically."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..keywords import KeywordIndex, TermCounts, concatenated_ranges
from . import (
    FORMAT_VERSION,
    ArticleRecord,
    ChunkRows,
    IndexCorruptError,
    IndexInfo,
    IndexNotFoundError,
    RRF_K,
    IndexReader,
    KeywordStats,
    SentenceRows,
    Store,
    Update,
)
from .segments import Rows, Segment, SegmentError, gather, remove_unreferenced, write_segment

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
GENERATION_PREFIX = "gen-"
DATABASE_FILE = "index.sqlite"
MANIFEST_FILE = "manifest.json"
SEGMENTS_DIR = "segments"
APPROXIMATE_FILE = "chunks.ivf.faiss"
LOCK_FILE = ".build.lock"
MAX_SEGMENTS = 12
"""More segments than this (or more dead rows than live ones in them) and a build merges them into one."""
APPROXIMATE_SEARCH_FROM = 200_000
"""Chunk count from which the dense search is approximate (FAISS IVF) instead of exhaustive; see bench/search.py."""
IVF_PROBES = 128
"""Lists an IVF search visits: recall@10 of 0.99 at 1M vectors, 0.97-0.99 from 200k (bench/search.py)."""
IVF_TRAINING_PER_LIST = 40
IVF_TRAINING_ITERATIONS = 10
"""k-means on at most 40 vectors a list, 10 rounds: the recipe whose recall bench/search.py measures."""
IVF_RETRAIN_GROWTH = 2.0
"""The IVF lists are trained again once the index holds this many times the chunks they were trained on."""
RESCORED_EXTRA = 14
"""Chunks the float16 search finds beyond the depth asked for, before the float32 scores keep the best. On 640
questions over 13,915 chunks the float16 top 50 alone was the float32 top 50 for 99.7% of them, in its order for 82%;
with these 14 rescored, 100% and 97.8% (the rest ties at the seventh decimal, ordered otherwise)."""
SEARCH_THREADS = 1
"""FAISS threads: one question's search is fastest on one thread, where OpenMP's wake-ups cost more than they save
and contend with the model's threads (2.8 ms against 0.7 ms a float32 search of 13,436 chunks beside the model)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS articles (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    sha256 TEXT NOT NULL,
    title TEXT NOT NULL,
    date TEXT,
    dateline TEXT,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sentences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    article_id INTEGER NOT NULL REFERENCES articles(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    sha1 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    article_id INTEGER NOT NULL REFERENCES articles(id) ON DELETE CASCADE,
    first_position INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sentences_by_article ON sentences(article_id, position);
CREATE INDEX IF NOT EXISTS chunks_by_article ON chunks(article_id);
"""
"""Rows (ids, text, offsets) live here; their vectors and term counts live in segment files under the same ids.
AUTOINCREMENT keeps ids from being reused, so a segment row is either live under its id or dead."""


class EmbeddedStore(Store):
    """An index folder: generations `gen-*/` (SQLite rows and a manifest), shared segment files, and a CURRENT
    pointer to the live generation, replaced atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.location = str(folder)

    def live(self) -> str | None:
        generation = current_generation(self.folder)
        return generation.name if generation is not None else None

    def open(self) -> EmbeddedReader:
        generation = current_generation(self.folder)
        if generation is None:
            raise IndexNotFoundError(
                f"no index in {self.location!r}: build it with `qa index --articles DIR --index {self.location}` "
                "(or `make run`)"
            )
        return EmbeddedReader(generation)

    def info(self) -> IndexInfo | None:
        generation = current_generation(self.folder)
        return _info(read_manifest(generation)) if generation is not None else None

    def hashes(self) -> dict[str, str]:
        generation = current_generation(self.folder)
        return _article_hashes(generation / DATABASE_FILE) if generation is not None else {}

    def write(self, update: Update, progress: Callable[[str], None] | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        update = dataclasses.replace(update, added=list(update.added))
        with _build_lock(self.folder):
            previous = None if update.rebuild else current_generation(self.folder)
            _write_generation(self.folder, previous, update)


def _best(scores: np.ndarray, count: int) -> np.ndarray:
    """Positions of the `count` highest scores, highest first."""
    top = np.argpartition(-scores, count - 1)[:count] if len(scores) > count else np.arange(len(scores))
    return top[np.argsort(-scores[top], kind="stable")]


def rescored_search(half: faiss.Index, vectors: np.ndarray, query: np.ndarray, depth: int) -> np.ndarray:
    """Rows of the `depth` vectors with the highest inner product with `query`, best first: the float16 index `half`
    finds RESCORED_EXTRA more than `depth`, and their float32 `vectors` order them exactly."""
    _, found = half.search(query[None, :], min(depth + RESCORED_EXTRA, len(vectors)))
    rows = found[0][found[0] >= 0]
    return rows[_best(vectors[rows] @ query, depth)]


def current_generation(index_dir: str | Path) -> Path | None:
    """The folder of the live index generation, or None when nothing has been built."""
    pointer = Path(index_dir) / CURRENT_FILE
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return Path(index_dir) / name


def read_manifest(generation: Path) -> dict:
    try:
        return json.loads((generation / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise IndexCorruptError(
            f"index manifest {generation / MANIFEST_FILE} is unreadable ({error}); run `qa index --rebuild`"
        ) from None


def _info(manifest: dict) -> IndexInfo:
    return IndexInfo(
        model=manifest.get("model", "?"),
        backend=manifest.get("backend", "torch"),
        dimension=manifest.get("dimension", 0),
        built_at=manifest.get("built_at", "?"),
        articles_dir=manifest.get("articles_dir", ""),
        n_articles=manifest.get("n_articles", 0),
        n_chunks=manifest.get("n_chunks", 0),
        n_sentences=manifest.get("n_sentences", 0),
        format_version=manifest.get("format_version", 0),
    )


@contextmanager
def _build_lock(index_root: Path) -> Iterator[None]:
    """Hold the index folder's build lock; a second build waits for the first to finish."""
    with open(index_root / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another build of %s is running; waiting for it to finish", index_root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _write_generation(index_root: Path, previous: Path | None, update: Update) -> None:
    """Write a new generation (a copy of `previous` with the update applied) and make it live."""
    _remove_leftovers(index_root)
    manifest = read_manifest(previous) if previous is not None else None
    staging = index_root / f"{GENERATION_PREFIX}{time.time_ns()}.tmp"
    staging.mkdir()
    segments_root = index_root / SEGMENTS_DIR
    try:
        if previous is not None:
            _copy_database(previous / DATABASE_FILE, staging / DATABASE_FILE)
        with closing(_connect(staging / DATABASE_FILE)) as db:
            db.executescript(SCHEMA)
            stale = [(path,) for path in dict.fromkeys([e.article.path for e in update.added] + update.removed)]
            dropped_chunks = np.array(
                [row[0] for path in stale for row in db.execute(
                    "SELECT c.id FROM chunks c JOIN articles a ON a.id = c.article_id WHERE a.path = ?", path)],
                dtype=np.int64,
            )
            db.executemany("DELETE FROM articles WHERE path = ?", stale)
            segments = list(manifest["segments"]) if manifest is not None else []
            added = _insert_articles(db, update)
            if added is not None:
                segments.append(_segment_entry(write_segment(segments_root, added), added))
            chunk_ids = _ids(db, "chunks")
            if not len(chunk_ids):
                raise ValueError("no article text to index: add .txt, .md or .html articles to the articles folder")
            sentence_ids = _ids(db, "sentences")
            segments = _merged_if_fragmented(segments_root, segments, chunk_ids, sentence_ids)
            db.commit()
        dimension = added.chunks.vectors.shape[1] if added is not None else manifest["dimension"]
        approximate = _write_approximate_search(
            staging, previous, manifest, segments_root, segments, chunk_ids, sentence_ids, dropped_chunks, added
        )
        _write_manifest(staging, update, dimension, segments, approximate, chunk_ids, sentence_ids)
        _publish(index_root, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _read_only(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True)


def _article_hashes(database: Path) -> dict[str, str]:
    try:
        with closing(_read_only(database)) as db:
            return dict(db.execute("SELECT path, sha256 FROM articles"))
    except sqlite3.DatabaseError as error:
        raise IndexCorruptError(f"index database {database} is unreadable ({error}); run `qa index --rebuild`") from None


def _copy_database(source: Path, target: Path) -> None:
    with closing(_read_only(source)) as old, closing(sqlite3.connect(target)) as new:
        old.backup(new)


def _ids(db: sqlite3.Connection, table: str) -> np.ndarray:
    return np.array([row[0] for row in db.execute(f"SELECT id FROM {table} ORDER BY id")], dtype=np.int64)


def _next_id(db: sqlite3.Connection, table: str) -> int:
    """The first id never used in `table` (AUTOINCREMENT's counter), so rows can be inserted with known ids."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return (row[0] if row else 0) + 1


def _insert_articles(db: sqlite3.Connection, update: Update) -> Segment | None:
    """Store the update's articles as rows and return their vectors and term counts as a segment."""
    if not update.added:
        return None
    chunk_rows, sentence_rows = [], []
    next_chunk, next_sentence = _next_id(db, "chunks"), _next_id(db, "sentences")
    for embedded in update.added:
        article = embedded.article
        article_id = db.execute(
            "INSERT INTO articles (path, sha256, title, date, dateline, text) VALUES (?, ?, ?, ?, ?, ?)",
            (article.path, article.sha256, article.title, article.date, article.dateline, article.text),
        ).lastrowid
        for chunk in embedded.chunks:
            chunk_rows.append((next_chunk, article_id, chunk.first, chunk.last, chunk.text))
            next_chunk += 1
        for position, (start, end, text) in enumerate(embedded.sentences):
            digest = hashlib.sha1(text.lower().encode("utf-8")).hexdigest()
            sentence_rows.append((next_sentence, article_id, position, start, end, text, digest))
            next_sentence += 1
    db.executemany("INSERT INTO chunks (id, article_id, first_position, last_position, text) VALUES (?, ?, ?, ?, ?)",
                   chunk_rows)
    db.executemany("INSERT INTO sentences (id, article_id, position, start, end, text, sha1) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   sentence_rows)
    return Segment(
        chunks=Rows(np.array([r[0] for r in chunk_rows], dtype=np.int64),
                    np.concatenate([e.chunk_vectors for e in update.added]),
                    TermCounts.of([r[4] for r in chunk_rows])),
        sentences=Rows(np.array([r[0] for r in sentence_rows], dtype=np.int64),
                       np.concatenate([e.sentence_vectors for e in update.added]),
                       TermCounts.of([r[5] for r in sentence_rows]),
                       np.concatenate([e.standalone_vectors for e in update.added]).astype(np.float16)),
    )


def _segment_entry(name: str, segment: Segment) -> dict:
    return {"name": name, "chunks": len(segment.chunks), "sentences": len(segment.sentences)}


def _merged_if_fragmented(
    segments_root: Path, segments: list[dict], chunk_ids: np.ndarray, sentence_ids: np.ndarray
) -> list[dict]:
    """The segment list, merged into one segment of live rows when there are too many or they hold mostly dead rows."""
    stored = sum(entry["chunks"] + entry["sentences"] for entry in segments)
    if len(segments) <= MAX_SEGMENTS and stored <= 2 * (len(chunk_ids) + len(sentence_ids)):
        return segments
    logger.info("merging %d segments (%d rows stored, %d live)", len(segments), stored, len(chunk_ids) + len(sentence_ids))
    merged = gather(segments_root, [entry["name"] for entry in segments], chunk_ids, sentence_ids)
    return [_segment_entry(write_segment(segments_root, merged), merged)]


def _write_approximate_search(
    staging: Path,
    previous: Path | None,
    manifest: dict | None,
    segments_root: Path,
    segments: list[dict],
    chunk_ids: np.ndarray,
    sentence_ids: np.ndarray,
    dropped_chunks: np.ndarray,
    added: Segment | None,
) -> dict | None:
    """For large indexes, an IVF index over the chunk vectors under their ids: updated in place of the previous
    generation's (removing dropped chunks, adding new ones) or trained afresh; None below APPROXIMATE_SEARCH_FROM."""
    if len(chunk_ids) < APPROXIMATE_SEARCH_FROM:
        return None
    import faiss

    earlier = (manifest or {}).get("approximate")
    if earlier and previous is not None and len(chunk_ids) <= IVF_RETRAIN_GROWTH * earlier["trained_on"]:
        search = faiss.read_index(str(previous / APPROXIMATE_FILE))
        search.remove_ids(dropped_chunks)
        if added is not None:
            search.add_with_ids(added.chunks.vectors, added.chunks.ids)
        settings = earlier
    else:
        vectors = gather(segments_root, [entry["name"] for entry in segments], chunk_ids, sentence_ids).chunks.vectors
        lists = int(2 ** round(np.log2(4 * np.sqrt(len(chunk_ids)))))  # about 4 sqrt(n), as bench/search.py sweeps
        logger.info("training an IVF index of %d lists on %d chunks", lists, len(chunk_ids))
        search = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        search.cp.niter = IVF_TRAINING_ITERATIONS
        sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), IVF_TRAINING_PER_LIST * lists), replace=False)
        search.train(vectors[np.sort(sample)])
        search.add_with_ids(vectors, chunk_ids)
        settings = {"kind": "ivf", "lists": lists, "probes": IVF_PROBES, "trained_on": len(chunk_ids)}
    faiss.write_index(search, str(staging / APPROXIMATE_FILE))
    return settings


def _write_manifest(
    folder: Path,
    update: Update,
    dimension: int,
    segments: list[dict],
    approximate: dict | None,
    chunk_ids: np.ndarray,
    sentence_ids: np.ndarray,
) -> None:
    with closing(sqlite3.connect(folder / DATABASE_FILE)) as db:
        n_articles = db.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": update.model,
        "backend": update.backend,
        "dimension": dimension,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "articles_dir": update.articles_dir,
        "n_articles": n_articles,
        "n_chunks": len(chunk_ids),
        "n_sentences": len(sentence_ids),
        "segments": segments,
        "approximate": approximate,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _publish(index_root: Path, staging: Path) -> None:
    """Make `staging` the live generation: fsync it, rename it, then switch CURRENT atomically."""
    final = staging.with_suffix("")
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    staging.rename(final)
    pointer = index_root / (CURRENT_FILE + ".tmp")
    with open(pointer, "w", encoding="utf-8") as handle:
        handle.write(final.name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    previous = current_generation(index_root)
    os.replace(pointer, index_root / CURRENT_FILE)
    _remove_old_generations(index_root, keep={final.name, previous.name if previous else ""})
    _remove_leftovers(index_root)


def _remove_old_generations(index_root: Path, keep: set[str]) -> None:
    """Delete generations other than the live one and the one just replaced (readers may still be loading it)."""
    for path in index_root.glob(f"{GENERATION_PREFIX}*"):
        if path.is_dir() and path.name not in keep and not path.name.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)


def _remove_leftovers(index_root: Path) -> None:
    """Remove what killed builds left: staging folders, and segments that no generation refers to."""
    for path in index_root.glob(f"{GENERATION_PREFIX}*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
    referenced: set[str] = set()
    for generation in index_root.glob(f"{GENERATION_PREFIX}*"):
        try:
            referenced.update(entry["name"] for entry in read_manifest(generation).get("segments", []))
        except IndexCorruptError:
            continue
    remove_unreferenced(index_root / SEGMENTS_DIR, referenced)


class EmbeddedReader(IndexReader):
    """One generation of an index folder, read into memory: rows from SQLite, vectors and term counts from its
    segments, a FAISS search over float16 copies of the chunk vectors (or the generation's IVF index when it has one)."""

    def __init__(self, generation: Path):
        self.generation = generation.name
        self.folder = generation
        self.manifest = read_manifest(generation)
        self.info = _info(self.manifest)
        try:
            self._load_tables(generation / DATABASE_FILE)
            rows = gather(
                generation.parent / SEGMENTS_DIR,
                [entry["name"] for entry in self.manifest["segments"]],
                self.chunk_ids,
                self.sentence_ids,
            )
            self.chunk_vectors = rows.chunks.vectors
            self.sentence_vectors = rows.sentences.vectors
            self.sentence_standalone = rows.sentences.standalone
            self.chunk_terms = rows.chunks.terms
            self.sentence_terms = rows.sentences.terms
            self.keywords = {"chunks": KeywordIndex(rows.chunks.terms), "sentences": KeywordIndex(rows.sentences.terms)}
            self.dense_search = self._dense_search()
        except (OSError, RuntimeError, ValueError, KeyError, sqlite3.DatabaseError) as error:
            raise IndexCorruptError(
                f"the index in {generation} cannot be read ({error}); run `qa index --rebuild`"
            ) from None

    def _dense_search(self):
        """Inner-product search over float16 copies of the chunk vectors (half the memory read of float32, so twice as
        fast; `search` rescores what it finds with the float32 vectors), or the generation's IVF index when it has one."""
        import faiss

        faiss.omp_set_num_threads(SEARCH_THREADS)
        approximate = self.manifest.get("approximate")
        if approximate is None:
            search = faiss.IndexScalarQuantizer(
                self.chunk_vectors.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            search.add(self.chunk_vectors)
            return search
        search = faiss.read_index(str(self.folder / APPROXIMATE_FILE))
        search.nprobe = approximate["probes"]
        if search.ntotal != len(self.chunk_ids):
            raise SegmentError(f"the IVF index holds {search.ntotal} chunks, not {len(self.chunk_ids)}")
        return search

    def _load_tables(self, database: Path) -> None:
        with closing(_read_only(database)) as db:
            chunk_counts = dict(db.execute("SELECT article_id, COUNT(*) FROM chunks GROUP BY article_id"))
            self._articles = {
                article_id: ArticleRecord(article_id, path, sha256, title, date, chunk_counts.get(article_id, 0))
                for article_id, path, sha256, title, date in db.execute(
                    "SELECT id, path, sha256, title, date FROM articles")
            }
            sentences = db.execute(
                "SELECT id, article_id, position, start, end, text, sha1 FROM sentences ORDER BY id"
            ).fetchall()
            chunks = db.execute("SELECT id, article_id, first_position, last_position FROM chunks ORDER BY id").fetchall()
        self._by_path = {record.path: article_id for article_id, record in self._articles.items()}
        self.sentence_ids = np.array([row[0] for row in sentences], dtype=np.int64)
        self.sentence_article = np.array([row[1] for row in sentences], dtype=np.int64)
        self.sentence_position = np.array([row[2] for row in sentences], dtype=np.int64)
        self.sentence_start = np.array([row[3] for row in sentences], dtype=np.int64)
        self.sentence_end = np.array([row[4] for row in sentences], dtype=np.int64)
        self.sentence_text = [row[5] for row in sentences]
        self.sentence_hash = [row[6] for row in sentences]
        first_row: dict[int, int] = {}
        for row, (article_id, position) in enumerate(zip(self.sentence_article, self.sentence_position)):
            if position == 0:
                first_row[int(article_id)] = row
        self.article_first_row = first_row
        self.article_row_count = Counter(self.sentence_article.tolist())
        self.chunk_ids = np.array([row[0] for row in chunks], dtype=np.int64)
        self.chunk_article = np.array([row[1] for row in chunks], dtype=np.int64)
        self.chunk_first = np.array([row[2] for row in chunks], dtype=np.int64)
        self.chunk_last = np.array([row[3] for row in chunks], dtype=np.int64)

    def search(
        self, vector: np.ndarray, text: str, terms: Sequence[str], depth: int, limit: int,
        articles: Sequence[int] | None = None,
    ) -> np.ndarray:
        inside = self._inside(articles)
        if inside is None and self.manifest.get("approximate") is not None:
            _, found = self.dense_search.search(vector[None, :], min(depth, len(self.chunk_ids)))
            dense = np.where(found[0] >= 0, np.searchsorted(self.chunk_ids, found[0]), -1)
        elif inside is None:
            dense = rescored_search(self.dense_search, self.chunk_vectors, vector, depth)
        else:
            dense = inside[_best(self.chunk_vectors[inside] @ vector, depth)]
        keyword = self._keyword_rows(terms, depth, inside)
        fused: dict[int, float] = {}
        for ranking in (dense, keyword):
            for rank, row in enumerate(ranking):
                if row >= 0:
                    fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (RRF_K + rank + 1)
        best = sorted(fused, key=fused.get, reverse=True)[:limit]
        return self.chunk_ids[np.array(best, dtype=np.int64)]

    def keyword_search(
        self, text: str, terms: Sequence[str], depth: int, articles: Sequence[int] | None = None
    ) -> np.ndarray:
        return self.chunk_ids[self._keyword_rows(terms, depth, self._inside(articles))]

    def _keyword_rows(self, terms: Sequence[str], depth: int, inside: np.ndarray | None) -> np.ndarray:
        """The rows of the `depth` chunks (among `inside`, else all) with the highest BM25 scores above 0, best first."""
        scores = self.keywords["chunks"].scores(list(terms))
        if inside is not None:
            kept = np.zeros_like(scores)
            kept[inside] = scores[inside]
            scores = kept
        best = _best(scores, depth)
        return best[scores[best] > 0]

    def _inside(self, articles: Sequence[int] | None) -> np.ndarray | None:
        """The chunk rows of `articles`, or None for every chunk."""
        if articles is None:
            return None
        return np.flatnonzero(np.isin(self.chunk_article, np.asarray(list(articles), dtype=np.int64)))

    def chunks(self, ids: Sequence[int] | None = None, articles: Sequence[int] | None = None) -> ChunkRows:
        if ids is not None:
            rows = np.searchsorted(self.chunk_ids, np.unique(np.asarray(ids, dtype=np.int64)))
        else:
            rows = np.flatnonzero(np.isin(self.chunk_article, np.asarray(list(articles or []), dtype=np.int64)))
        return ChunkRows(
            self.chunk_ids[rows], self.chunk_article[rows], self.chunk_first[rows], self.chunk_last[rows],
            self.chunk_vectors[rows], self.chunk_terms.rows(rows),
        )

    def sentences(self, spans: Sequence[tuple[int, int, int]]) -> SentenceRows:
        starts, lengths = [], []
        for article_id, first, last in spans:
            start = self.article_first_row.get(int(article_id))
            if start is not None:
                first, last = max(int(first), 0), min(int(last), self.article_row_count[int(article_id)] - 1)
                starts.append(start + first)
                lengths.append(max(last - first + 1, 0))
        rows = np.unique(concatenated_ranges(starts, lengths))
        return SentenceRows(
            self.sentence_ids[rows], self.sentence_article[rows], self.sentence_position[rows],
            self.sentence_start[rows], self.sentence_end[rows], [self.sentence_text[r] for r in rows.tolist()],
            [self.sentence_hash[r] for r in rows.tolist()], self.sentence_vectors[rows], self.sentence_standalone[rows],
            self.sentence_terms.rows(rows),
        )

    def keyword_stats(self, kind: str, terms: Sequence[str]) -> KeywordStats:
        keywords = self.keywords[kind]
        return KeywordStats(keywords.n_rows, keywords.average_length, keywords.frequencies(terms))

    def article(self, article_id: int) -> ArticleRecord:
        return self._articles[int(article_id)]

    def article_id(self, path: str) -> int | None:
        return self._by_path.get(path)

    def articles(self) -> list[ArticleRecord]:
        return sorted(self._articles.values(), key=lambda record: record.path)
