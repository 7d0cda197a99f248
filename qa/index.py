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
from .articles import Article, SkippedFile, read_articles
from .chunks import chunk_article, sentence_text

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
GENERATION_PREFIX = "gen-"
DATABASE_FILE = "index.sqlite"
FAISS_FILE = "chunks.faiss"
SENTENCE_VECTORS_FILE = "sentences.npy"
BM25_CHUNKS_DIR = "bm25_chunks"
BM25_SENTENCES_DIR = "bm25_sentences"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".build.lock"
EMBED_BATCH_CHUNKS = 256

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
    id INTEGER PRIMARY KEY,
    article_id INTEGER NOT NULL REFERENCES articles(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    article_id INTEGER NOT NULL REFERENCES articles(id) ON DELETE CASCADE,
    first_position INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sentences_by_article ON sentences(article_id, position);
CREATE INDEX IF NOT EXISTS chunks_by_article ON chunks(article_id);
"""


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
    progress: Callable[[int, int], None] | None = None,
) -> IndexReport:
    """Bring the index in `index_dir` up to date with the articles in `articles_dir`.

    Unchanged articles keep their embeddings; changed and new ones are embedded; removed ones leave.
    A changed model (or `rebuild=True`) re-embeds everything. The new index replaces the old one
    atomically: if the build fails or is interrupted, the previous index stays live.
    `progress(done, total)` is called with counts of chunks embedded.
    """
    started = time.perf_counter()
    articles_root = Path(config.articles_dir(articles_dir)).resolve()
    index_root = Path(config.index_dir(index_dir))
    model_name = config.model_name(model)
    articles, skipped = read_articles(articles_root)
    report = IndexReport(skipped=skipped)
    index_root.mkdir(parents=True, exist_ok=True)
    with _build_lock(index_root):
        previous = current_generation(index_root)
        if previous is not None and not rebuild and not _same_model(read_manifest(previous), model_name):
            previous = None
        old_hashes = _article_hashes(previous / DATABASE_FILE) if previous is not None and not rebuild else {}
        reuse = previous is not None and not rebuild
        paths = {article.path for article in articles}
        to_embed = [a for a in articles if old_hashes.get(a.path) != a.sha256]
        removed = [path for path in old_hashes if path not in paths]
        report.added = sum(1 for a in to_embed if a.path not in old_hashes)
        report.updated = len(to_embed) - report.added
        report.removed = len(removed)
        report.unchanged = len(articles) - len(to_embed)
        report.full_rebuild = not reuse
        same_folder = reuse and read_manifest(previous).get("articles_dir") == str(articles_root)
        if same_folder and not to_embed and not removed:
            logger.info("index is up to date (%d articles)", report.unchanged)
        else:
            _build_generation(
                index_root, previous if reuse else None, to_embed, removed, old_hashes, model_name, articles_root, report, progress
            )
            logger.info(
                "index built: %d added, %d updated, %d removed, %d unchanged, %d chunks embedded",
                report.added, report.updated, report.removed, report.unchanged, report.chunks_embedded,
            )
    report.seconds = time.perf_counter() - started
    return report


def _same_model(manifest: dict, model_name: str) -> bool:
    """True when the index was built with `model_name` and this format; logs why everything is re-embedded if not."""
    if manifest.get("model") == model_name and manifest.get("format_version") == FORMAT_VERSION:
        return True
    logger.warning(
        "the index was built with model %r (format %s); rebuilding everything with %r",
        manifest.get("model"), manifest.get("format_version"), model_name,
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
    to_embed: list[Article],
    removed: list[str],
    old_hashes: dict[str, str],
    model_name: str,
    articles_root: Path,
    report: IndexReport,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Write a new generation (a copy of `previous` with the changes applied) and make it live."""
    _remove_stale_temporaries(index_root)
    staging = index_root / f"{GENERATION_PREFIX}{time.time_ns()}.tmp"
    staging.mkdir()
    try:
        if previous is not None:
            _copy_database(previous / DATABASE_FILE, staging / DATABASE_FILE)
        with closing(_connect(staging / DATABASE_FILE)) as db:
            db.executescript(SCHEMA)
            stale = [a.path for a in to_embed if a.path in old_hashes] + removed
            db.executemany("DELETE FROM articles WHERE path = ?", [(path,) for path in stale])
            report.chunks_embedded = _embed_articles(db, to_embed, model_name, progress)
            db.commit()
            dimension = _write_search_files(db, staging)
        _write_manifest(staging, model_name, dimension, articles_root)
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


def _embed_articles(
    db: sqlite3.Connection, articles: list[Article], model_name: str, progress: Callable[[int, int], None] | None
) -> int:
    """Chunk and embed the articles and store them with their sentences; returns chunks embedded."""
    if not articles:
        return 0
    from .embeddings import get_embedder

    embedder = get_embedder(model_name)
    pending = []
    for article in articles:
        sentences, chunks = chunk_article(article, embedder.count_tokens)
        cursor = db.execute(
            "INSERT INTO articles (path, sha256, title, date, dateline, text) VALUES (?, ?, ?, ?, ?, ?)",
            (article.path, article.sha256, article.title, article.date, article.dateline, article.text),
        )
        pending.append((cursor.lastrowid, article, sentences, chunks))
    total = sum(len(chunks) for *_, chunks in pending)
    done = 0
    with tqdm(total=total, desc="embedding chunks", unit="chunk", disable=None) as bar:
        for batch in _batches(pending, EMBED_BATCH_CHUNKS):
            flat = [(item, chunk) for item in batch for chunk in item[3]]
            embedded = embedder.encode_chunks([c.text for _, c in flat], [c.sentence_spans for _, c in flat])
            per_sentence: dict[tuple[int, int], list[np.ndarray]] = {}
            for ((article_id, _, _, _), chunk), vector, sentence_vectors in zip(flat, embedded.chunks, embedded.sentences):
                db.execute(
                    "INSERT INTO chunks (article_id, first_position, last_position, text, vector) VALUES (?, ?, ?, ?, ?)",
                    (article_id, chunk.first, chunk.last, chunk.text, vector.tobytes()),
                )
                for offset, sentence_vector in enumerate(sentence_vectors):
                    per_sentence.setdefault((article_id, chunk.first + offset), []).append(sentence_vector)
            for article_id, article, sentences, _ in batch:
                rows = []
                for position, sentence in enumerate(sentences):
                    text = sentence_text(article, sentence)
                    vector = _mean_unit(per_sentence[(article_id, position)])
                    digest = hashlib.sha1(text.lower().encode("utf-8")).hexdigest()
                    rows.append((article_id, position, sentence.start, sentence.end, text, digest, vector.tobytes()))
                db.executemany(
                    "INSERT INTO sentences (article_id, position, start, end, text, sha1, vector) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            done += len(flat)
            bar.update(len(flat))
            if progress:
                progress(done, total)
    return total


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


def _write_search_files(db: sqlite3.Connection, folder: Path) -> int:
    """Derive the FAISS index, the sentence-vector matrix and the BM25 indexes from the database."""
    import bm25s
    import faiss

    from .retrieval import tokenize

    chunk_rows = db.execute("SELECT text, vector FROM chunks ORDER BY id").fetchall()
    sentence_rows = db.execute("SELECT text, vector FROM sentences ORDER BY id").fetchall()
    if not chunk_rows:
        raise ValueError("no article text to index: add .txt or .md articles to the articles folder")
    chunk_vectors = np.stack([np.frombuffer(vector, np.float32) for _, vector in chunk_rows])
    dimension = chunk_vectors.shape[1]
    vectors = faiss.IndexFlatIP(dimension)
    vectors.add(chunk_vectors)
    faiss.write_index(vectors, str(folder / FAISS_FILE))
    np.save(folder / SENTENCE_VECTORS_FILE, np.stack([np.frombuffer(vector, np.float32) for _, vector in sentence_rows]))
    for texts, name in (([t for t, _ in chunk_rows], BM25_CHUNKS_DIR), ([t for t, _ in sentence_rows], BM25_SENTENCES_DIR)):
        keyword_index = bm25s.BM25()
        keyword_index.index(tokenize(texts), show_progress=False)
        keyword_index.save(str(folder / name))
    return dimension


def _write_manifest(folder: Path, model_name: str, dimension: int, articles_root: Path) -> None:
    with closing(sqlite3.connect(folder / DATABASE_FILE)) as db:
        counts = {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("articles", "chunks", "sentences")
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "dimension": dimension,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "articles_dir": str(articles_root),
        "n_articles": counts["articles"],
        "n_chunks": counts["chunks"],
        "n_sentences": counts["sentences"],
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


def _remove_old_generations(index_root: Path, keep: set[str]) -> None:
    """Delete generations other than the live one and the one just replaced (readers may still be loading it)."""
    for path in index_root.glob(f"{GENERATION_PREFIX}*"):
        if path.is_dir() and path.name not in keep and not path.name.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)


def _remove_stale_temporaries(index_root: Path) -> None:
    """Remove staging folders left by builds that were killed."""
    for path in index_root.glob(f"{GENERATION_PREFIX}*.tmp"):
        shutil.rmtree(path, ignore_errors=True)


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
        dimension=manifest["dimension"],
        built_at=manifest["built_at"],
        articles_dir=manifest["articles_dir"],
        n_articles=manifest["n_articles"],
        n_chunks=manifest["n_chunks"],
        n_sentences=manifest["n_sentences"],
        articles=[IndexedArticle(path, title, date, chunks) for path, title, date, chunks in rows],
    )
