"""Index: bringing a store up to date with the articles folder (what changed, chunking, embedding)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import config
from .articles import Article, SkippedFile, read_articles, require_folder
from .chunks import chunk_article, sentence_text
from .distributed import RaySettings, embed_on_ray
from .progress import progress_bar
from .retrieval import load_index
from .store import FORMAT_VERSION, EmbeddedArticle, IndexInfo, Update, open_store

if TYPE_CHECKING:
    from .worker import BuildWorker

logger = logging.getLogger(__name__)

EMBED_BATCH_CHUNKS = 256


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
class IndexSummary(IndexInfo):
    """The state of a built index, as shown to users: what it is, and its articles."""

    articles: list[IndexedArticle] = field(default_factory=list)


def build_index(
    articles_dir: str | os.PathLike | None = None,
    index_dir: str | os.PathLike | None = None,
    model: str | None = None,
    *,
    rebuild: bool = False,
    backend: str | None = None,
    store: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    worker: BuildWorker | None = None,
    ray: RaySettings | None = None,
) -> IndexReport:
    """Bring the index up to date with the articles in `articles_dir`.

    The index lives in `store` (else $QA_STORE): `milvus:PATH` for a Milvus Lite file, `http(s)://HOST:PORT` for a
    Milvus server; unset, in the folder `index_dir` (else $QA_INDEX, else `index`).
    Unchanged articles are neither parsed nor embedded again; changed and new ones are embedded; removed ones
    leave. A changed model or backend (or `rebuild=True`) re-embeds everything. Readers see the new index all at
    once: if the build fails or is interrupted, the previous index stays live. `progress(done, total)` is called
    with counts of chunks embedded. With a `worker`, the embedding runs in its process instead of this one; with
    `ray`, on Ray Data actors (see qa.distributed), the store still written once, from here.
    """
    from .embeddings import backend_name, has_export

    started = time.perf_counter()
    articles_root = Path(config.articles_dir(articles_dir)).resolve()
    target = open_store(store, index_dir)
    encoder = Encoder(config.model_name(model), backend_name(backend))
    require_folder(articles_root)
    info = None if rebuild else target.info()
    if info is not None and not _same_encoder(info, encoder):
        info = None
    old_hashes = target.hashes() if info is not None else {}
    scan = read_articles(articles_root, old_hashes)
    present = set(scan.unchanged) | {article.path for article in scan.articles}
    removed = [path for path in old_hashes if path not in present]
    report = IndexReport(skipped=scan.skipped, full_rebuild=info is None)
    report.added = sum(1 for article in scan.articles if article.path not in old_hashes)
    report.updated = len(scan.articles) - report.added
    report.removed = len(removed)
    report.unchanged = len(scan.unchanged)
    changed = info is None or info.articles_dir != str(articles_root) or bool(scan.articles) or bool(removed)
    with ExitStack() as stack:
        if changed or not has_export(encoder.model):
            logger.info("embedding %d new or changed articles", len(scan.articles))
            if ray is not None:
                export_for_questions(encoder)
                added = stack.enter_context(closing(embed_on_ray(scan.articles, encoder.model, encoder.backend, ray)))
            else:
                embed = worker.embed if worker is not None else embed_for_index
                added = embed(scan.articles, encoder, progress)
        if changed:
            logger.info("writing %d articles and %d removals to %s", len(scan.articles), len(removed), target.location)
            target.write(Update(encoder.model, encoder.backend, str(articles_root), removed,
                                _counting_chunks(added, report), rebuild=info is None))
    if changed:
        logger.info(
            "index built: %d added, %d updated, %d removed, %d unchanged, %d chunks embedded",
            report.added, report.updated, report.removed, report.unchanged, report.chunks_embedded,
        )
    else:
        logger.info("index is up to date (%d articles)", report.unchanged)
    report.seconds = time.perf_counter() - started
    return report


def _counting_chunks(added: Iterable[EmbeddedArticle], report: IndexReport) -> Iterator[EmbeddedArticle]:
    """`added` as it is read, its chunks counted into `report`."""
    for embedded in added:
        report.chunks_embedded += len(embedded.chunks)
        yield embedded


def embed_for_index(
    articles: list[Article], encoder: Encoder, progress: Callable[[int, int], None] | None = None
) -> list[EmbeddedArticle]:
    """The build's model step: `articles` embedded (see `embed_articles`), and the ONNX export that `qa ask` and
    `qa serve` encode questions with made if it is missing, so that a question never waits for PyTorch. A model the
    export cannot reproduce leaves questions to the model itself."""
    embedded = embed_articles(articles, encoder, progress)
    export_for_questions(encoder)
    return embedded


def export_for_questions(encoder: Encoder) -> None:
    """Make the ONNX export that questions are encoded with, if it is missing (a model the export cannot reproduce
    leaves questions to the model itself)."""
    from .embeddings import get_embedder, has_export

    if has_export(encoder.model):
        return
    try:
        get_embedder(encoder.model, encoder.backend).export()
    except RuntimeError as error:
        logger.info("questions will be encoded by the model itself: %s", error)


@dataclass(frozen=True)
class Encoder:
    """The model and backend that embed an index; queries must be encoded the same way."""

    model: str
    backend: str


def _same_encoder(info: IndexInfo, encoder: Encoder) -> bool:
    """True when the index was built by `encoder` in this format; logs why everything is re-embedded if not."""
    if Encoder(info.model, info.backend) == encoder and info.format_version == FORMAT_VERSION:
        return True
    logger.warning(
        "the index was built with model %r on %s (format %s); re-embedding everything with %r on %s",
        info.model, info.backend, info.format_version, encoder.model, encoder.backend,
    )
    return False


def embed_articles(
    articles: list[Article], encoder: Encoder, progress: Callable[[int, int], None] | None
) -> list[EmbeddedArticle]:
    """Each article chunked, with vectors for its chunks and for its sentences: late-chunked (read in their chunk)
    and each on its own. Collections repeat themselves (a wire story filed twice, a boilerplate line), so an article
    whose chunks are those of an earlier one takes its vectors, and a sentence text is encoded once per batch."""
    if not articles:
        return []
    from .embeddings import get_embedder

    embedder = get_embedder(encoder.model, encoder.backend)
    pending = [(article, *chunk_article(article, embedder.count_tokens)) for article in articles]
    first_with_chunks: dict[tuple, int] = {}
    original_of = [
        first_with_chunks.setdefault(tuple((c.text, c.sentence_spans) for c in chunks), position)
        for position, (_, _, chunks) in enumerate(pending)
    ]
    first_positions = [position for position, original in enumerate(original_of) if original == position]
    originals = [pending[position] for position in first_positions]
    total = sum(len(chunks) for *_, chunks in pending)
    embedded, done = [], 0
    with progress_bar(total, "embedding chunks", "chunk") as bar:
        for batch in _batches(originals, EMBED_BATCH_CHUNKS):
            flat = [(item, chunk) for item in batch for chunk in item[2]]
            vectors = embedder.encode_chunks([c.text for _, c in flat], [c.sentence_spans for _, c in flat])
            per_chunk = iter(zip(vectors.chunks, vectors.sentences))
            texts = [[sentence_text(article, s) for s in sentences] for article, sentences, _ in batch]
            alone = iter(_encoded_once([t for ts in texts for t in ts], embedder.encode_texts))
            for (article, sentences, chunks), sentence_texts in zip(batch, texts):
                per_sentence: dict[int, list[np.ndarray]] = {}
                chunk_vectors = []
                for chunk in chunks:
                    vector, sentence_vectors = next(per_chunk)
                    chunk_vectors.append(vector)
                    for offset, sentence_vector in enumerate(sentence_vectors):
                        per_sentence.setdefault(chunk.first + offset, []).append(sentence_vector)
                embedded.append(EmbeddedArticle(
                    article=article,
                    sentences=[(s.start, s.end, text) for s, text in zip(sentences, sentence_texts)],
                    chunks=chunks,
                    chunk_vectors=np.stack(chunk_vectors).astype(np.float32),
                    sentence_vectors=np.stack([_mean_unit(per_sentence[p]) for p in range(len(sentences))]),
                    standalone_vectors=np.stack([next(alone) for _ in sentence_texts]),
                ))
            done += len(flat)
            bar.update(len(flat))
            if progress:
                progress(done, total)
        if len(originals) < len(pending):
            bar.update(total - done)
            if progress:
                progress(total, total)
    of_original = dict(zip(first_positions, embedded))
    return [
        of_original[position] if original == position else dataclasses.replace(
            of_original[original], article=article, chunks=chunks,
            sentences=[(s.start, s.end, sentence_text(article, s)) for s in sentences],
        )
        for position, (original, (article, sentences, chunks)) in enumerate(zip(original_of, pending))
    ]


def _batches(pending: list, chunk_budget: int) -> Iterator[list]:
    """Whole articles grouped so that each group holds about `chunk_budget` chunks."""
    batch, size = [], 0
    for item in pending:
        batch.append(item)
        size += len(item[2])
        if size >= chunk_budget:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encoded_once(texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> list[np.ndarray]:
    """The vector of each text, each distinct text encoded once."""
    distinct = list(dict.fromkeys(texts))
    vectors = dict(zip(distinct, encode(distinct)))
    return [vectors[text] for text in texts]


def _mean_unit(vectors: list[np.ndarray]) -> np.ndarray:
    mean = np.mean(vectors, axis=0) if len(vectors) > 1 else vectors[0]
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def describe_index(index_dir: str | os.PathLike | None = None, store: str | None = None) -> IndexSummary:
    """What the live index holds: model, build time, counts and the list of articles (read from the state answers
    are given from, loaded once per process)."""
    reader = load_index(index_dir, store).reader
    return IndexSummary(
        **vars(reader.info),
        articles=[IndexedArticle(a.path, a.title, a.date, a.chunks) for a in reader.articles()],
    )
