"""Index: building, updating and loading the on-disk index (SQLite + FAISS + BM25), swapped in atomically."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import config
from .articles import Article, SkippedFile, read_articles, require_folder
from .chunks import chunk_article, sentence_text
from .keywords import TermCounts
from .segments import Rows, Segment, gather, remove_unreferenced, write_segment

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
CURRENT_FILE = "CURRENT"
GENERATION_PREFIX = "gen-"
DATABASE_FILE = "index.sqlite"
MANIFEST_FILE = "manifest.json"
SEGMENTS_DIR = "segments"
APPROXIMATE_FILE = "chunks.ivf.faiss"
LOCK_FILE = ".build.lock"
EMBED_BATCH_CHUNKS = 256
MAX_SEGMENTS = 12
"""More segments than this (or more dead rows than live ones in them) and a build merges them into one."""
APPROXIMATE_SEARCH_FROM = 200_000
"""Chunk count from which the dense search is approximate (FAISS IVF) instead of exact; see bench/search.py."""
IVF_PROBES = 128
"""Lists an IVF search visits: recall@10 of 0.99 at 1M vectors, 0.97-0.99 from 200k (bench/search.py)."""
IVF_TRAINING_PER_LIST = 40
IVF_TRAINING_ITERATIONS = 10
"""k-means on at most 40 vectors a list, 10 rounds: the recipe whose recall bench/search.py measures."""
IVF_RETRAIN_GROWTH = 2.0
"""The IVF lists are trained again once the index holds this many times the chunks they were trained on."""

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


@dataclass
class IndexReport:
    """What a build did."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0
    skipped: list[SkippedFile] = field(default_factory=list)
    full_rebuild: bool = False


@dataclass(frozen=True)
class IndexedArticle:
    path: str
    title: str
    date: str | None
    chunks: int


@dataclass(frozen=True)
class IndexSummary:
    """The state of a built index, as shown to users."""

    model: str
    backend: str
    dimension: int
    built_at: str
    articles_dir: str
    n_articles: int
    n_chunks: int
    n_sentences: int
    articles: list[IndexedArticle]


class IndexNotFoundError(FileNotFoundError):
    """There is no built index in the folder."""


class IndexCorruptError(RuntimeError):
    """The index files cannot be read."""


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


def build_index(
    articles_dir: str | os.PathLike | None = None,
    index_dir: str | os.PathLike | None = None,
    model: str | None = None,
    *,
    rebuild: bool = False,
    backend: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IndexReport:
    """Bring the index in `index_dir` up to date with the articles in `articles_dir`.

    Unchanged articles are neither parsed nor embedded again; changed and new ones are embedded into a
    new segment; removed ones leave. A changed model or backend (or `rebuild=True`) re-embeds everything.
    The new index replaces the old one atomically: if the build fails or is interrupted, the previous
    index stays live. `progress(done, total)` is called with counts of chunks embedded.
    """
    from .embeddings import backend_name

    started = time.perf_counter()
    articles_root = Path(config.articles_dir(articles_dir)).resolve()
    index_root = Path(config.index_dir(index_dir))
    encoder = Encoder(config.model_name(model), backend_name(backend))
    require_folder(articles_root)
    index_root.mkdir(parents=True, exist_ok=True)
    with _build_lock(index_root):
        previous = None if rebuild else current_generation(index_root)
        manifest = read_manifest(previous) if previous is not None else None
        if manifest is not None and not _same_encoder(manifest, encoder):
            previous, manifest = None, None
        old_hashes = _article_hashes(previous / DATABASE_FILE) if previous is not None else {}
        scan = read_articles(articles_root, old_hashes)
        present = set(scan.unchanged) | {article.path for article in scan.articles}
        removed = [path for path in old_hashes if path not in present]
        report = IndexReport(skipped=scan.skipped, full_rebuild=previous is None)
        report.added = sum(1 for article in scan.articles if article.path not in old_hashes)
        report.updated = len(scan.articles) - report.added
        report.removed = len(removed)
        report.unchanged = len(scan.unchanged)
        if manifest is not None and manifest.get("articles_dir") == str(articles_root) and not scan.articles and not removed:
            logger.info("index is up to date (%d articles)", report.unchanged)
        else:
            _build_generation(index_root, previous, manifest, scan.articles, removed, encoder, articles_root, report, progress)
            logger.info(
                "index built: %d added, %d updated, %d removed, %d unchanged, %d chunks embedded",
                report.added, report.updated, report.removed, report.unchanged, report.chunks_embedded,
            )
    report.seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class Encoder:
    """The model and backend that embed an index; queries must be encoded the same way."""

    model: str
    backend: str


def _same_encoder(manifest: dict, encoder: Encoder) -> bool:
    """True when the index was built by `encoder` in this format; logs why everything is re-embedded if not."""
    built_by = Encoder(manifest.get("model", "?"), manifest.get("backend", "torch"))
    if built_by == encoder and manifest.get("format_version") == FORMAT_VERSION:
        return True
    logger.warning(
        "the index was built with model %r on %s (format %s); re-embedding everything with %r on %s",
        built_by.model, built_by.backend, manifest.get("format_version"), encoder.model, encoder.backend,
    )
    return False


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


def _build_generation(
    index_root: Path,
    previous: Path | None,
    manifest: dict | None,
    to_embed: list[Article],
    removed: list[str],
    encoder: Encoder,
    articles_root: Path,
    report: IndexReport,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Write a new generation (a copy of `previous` with the changes applied) and make it live."""
    _remove_leftovers(index_root)
    staging = index_root / f"{GENERATION_PREFIX}{time.time_ns()}.tmp"
    staging.mkdir()
    segments_root = index_root / SEGMENTS_DIR
    try:
        if previous is not None:
            _copy_database(previous / DATABASE_FILE, staging / DATABASE_FILE)
        with closing(_connect(staging / DATABASE_FILE)) as db:
            db.executescript(SCHEMA)
            stale = [(path,) for path in [a.path for a in to_embed] + removed]
            dropped_chunks = np.array(
                [row[0] for path in stale for row in db.execute(
                    "SELECT c.id FROM chunks c JOIN articles a ON a.id = c.article_id WHERE a.path = ?", path)],
                dtype=np.int64,
            )
            db.executemany("DELETE FROM articles WHERE path = ?", stale)
            segments = list(manifest["segments"]) if manifest is not None else []
            added = _embed_articles(db, to_embed, encoder, progress)
            if added is not None:
                segments.append(_segment_entry(write_segment(segments_root, added), added))
                report.chunks_embedded = len(added.chunks)
            chunk_ids = _ids(db, "chunks")
            if not len(chunk_ids):
                raise ValueError("no article text to index: add .txt or .md articles to the articles folder")
            sentence_ids = _ids(db, "sentences")
            segments = _merged_if_fragmented(segments_root, segments, chunk_ids, sentence_ids)
            db.commit()
        dimension = added.chunks.vectors.shape[1] if added is not None else manifest["dimension"]
        approximate = _write_approximate_search(
            staging, previous, manifest, segments_root, segments, chunk_ids, sentence_ids, dropped_chunks, added
        )
        _write_manifest(staging, encoder, dimension, articles_root, segments, approximate, chunk_ids, sentence_ids)
        _publish(index_root, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _article_hashes(database: Path) -> dict[str, str]:
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return dict(db.execute("SELECT path, sha256 FROM articles"))
    except sqlite3.DatabaseError as error:
        raise IndexCorruptError(f"index database {database} is unreadable ({error}); run `qa index --rebuild`") from None


def _copy_database(source: Path, target: Path) -> None:
    with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as old, closing(sqlite3.connect(target)) as new:
        old.backup(new)


def _ids(db: sqlite3.Connection, table: str) -> np.ndarray:
    return np.array([row[0] for row in db.execute(f"SELECT id FROM {table} ORDER BY id")], dtype=np.int64)


def _next_id(db: sqlite3.Connection, table: str) -> int:
    """The first id never used in `table` (AUTOINCREMENT's counter), so rows can be inserted with known ids."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return (row[0] if row else 0) + 1


def _embed_articles(
    db: sqlite3.Connection, articles: list[Article], encoder: Encoder, progress: Callable[[int, int], None] | None
) -> Segment | None:
    """Chunk and embed the articles, store their rows, and return their vectors and term counts as a segment."""
    if not articles:
        return None
    from .embeddings import get_embedder

    embedder = get_embedder(encoder.model, encoder.backend)
    pending = []
    for article in articles:
        sentences, chunks = chunk_article(article, embedder.count_tokens)
        cursor = db.execute(
            "INSERT INTO articles (path, sha256, title, date, dateline, text) VALUES (?, ?, ?, ?, ?, ?)",
            (article.path, article.sha256, article.title, article.date, article.dateline, article.text),
        )
        pending.append((cursor.lastrowid, article, sentences, chunks))
    total = sum(len(chunks) for *_, chunks in pending)
    chunk_rows, sentence_rows = [], []
    chunk_vectors: list[np.ndarray] = []
    sentence_vectors: list[np.ndarray] = []
    next_chunk, next_sentence = _next_id(db, "chunks"), _next_id(db, "sentences")
    done = 0
    with tqdm(total=total, desc="embedding chunks", unit="chunk", disable=None) as bar:
        for batch in _batches(pending, EMBED_BATCH_CHUNKS):
            flat = [(item, chunk) for item in batch for chunk in item[3]]
            embedded = embedder.encode_chunks([c.text for _, c in flat], [c.sentence_spans for _, c in flat])
            per_sentence: dict[tuple[int, int], list[np.ndarray]] = {}
            for ((article_id, _, _, _), chunk), vector, vectors in zip(flat, embedded.chunks, embedded.sentences):
                chunk_rows.append((next_chunk, article_id, chunk.first, chunk.last, chunk.text))
                chunk_vectors.append(vector)
                next_chunk += 1
                for offset, sentence_vector in enumerate(vectors):
                    per_sentence.setdefault((article_id, chunk.first + offset), []).append(sentence_vector)
            for article_id, article, sentences, _ in batch:
                for position, sentence in enumerate(sentences):
                    text = sentence_text(article, sentence)
                    digest = hashlib.sha1(text.lower().encode("utf-8")).hexdigest()
                    sentence_rows.append((next_sentence, article_id, position, sentence.start, sentence.end, text, digest))
                    sentence_vectors.append(_mean_unit(per_sentence[(article_id, position)]))
                    next_sentence += 1
            done += len(flat)
            bar.update(len(flat))
            if progress:
                progress(done, total)
    db.executemany("INSERT INTO chunks (id, article_id, first_position, last_position, text) VALUES (?, ?, ?, ?, ?)",
                   chunk_rows)
    db.executemany("INSERT INTO sentences (id, article_id, position, start, end, text, sha1) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   sentence_rows)
    return Segment(
        chunks=Rows(np.array([r[0] for r in chunk_rows], dtype=np.int64), np.stack(chunk_vectors),
                    TermCounts.of([r[4] for r in chunk_rows])),
        sentences=Rows(np.array([r[0] for r in sentence_rows], dtype=np.int64), np.stack(sentence_vectors),
                       TermCounts.of([r[5] for r in sentence_rows])),
    )


def _batches(pending: list, chunk_budget: int) -> Iterator[list]:
    """Whole articles grouped so that each group holds about `chunk_budget` chunks."""
    batch, size = [], 0
    for item in pending:
        batch.append(item)
        size += len(item[3])
        if size >= chunk_budget:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _mean_unit(vectors: list[np.ndarray]) -> np.ndarray:
    mean = np.mean(vectors, axis=0) if len(vectors) > 1 else vectors[0]
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


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
    encoder: Encoder,
    dimension: int,
    articles_root: Path,
    segments: list[dict],
    approximate: dict | None,
    chunk_ids: np.ndarray,
    sentence_ids: np.ndarray,
) -> None:
    with closing(sqlite3.connect(folder / DATABASE_FILE)) as db:
        n_articles = db.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": encoder.model,
        "backend": encoder.backend,
        "dimension": dimension,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "articles_dir": str(articles_root),
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


def describe_index(index_dir: str | os.PathLike | None = None) -> IndexSummary:
    """What the live index holds: model, build time, counts and the list of articles."""
    generation = current_generation(config.index_dir(index_dir))
    if generation is None:
        raise IndexNotFoundError(f"no index in {config.index_dir(index_dir)!r}: build one with `qa index`")
    manifest = read_manifest(generation)
    with closing(sqlite3.connect(f"file:{generation / DATABASE_FILE}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT a.path, a.title, a.date, COUNT(c.id) FROM articles a LEFT JOIN chunks c ON c.article_id = a.id "
            "GROUP BY a.id ORDER BY a.path"
        ).fetchall()
    return IndexSummary(
        model=manifest["model"],
        backend=manifest["backend"],
        dimension=manifest["dimension"],
        built_at=manifest["built_at"],
        articles_dir=manifest["articles_dir"],
        n_articles=manifest["n_articles"],
        n_chunks=manifest["n_chunks"],
        n_sentences=manifest["n_sentences"],
        articles=[IndexedArticle(path, title, date, chunks) for path, title, date, chunks in rows],
    )
