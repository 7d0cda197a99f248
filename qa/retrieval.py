"""Retrieval: loading a built index and ranking its sentences against a question (dense + BM25, fused)."""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import config
from .index import (
    APPROXIMATE_FILE,
    DATABASE_FILE,
    SEGMENTS_DIR,
    IndexCorruptError,
    IndexNotFoundError,
    current_generation,
    read_manifest,
)
from .keywords import KeywordIndex, tokenize
from .segments import SegmentError, gather

logger = logging.getLogger(__name__)

FIRST_STAGE_DEPTH = 50
"""Chunks each retriever (dense, BM25) contributes before fusion."""
FUSED_CHUNKS = 30
"""Chunks, after reciprocal rank fusion, whose sentences are scored."""
RRF_K = 60
LENGTH_WEIGHT = 0.2
FEATURE_WEIGHTS = np.array([1.0, 1.0, 0.5, 0.5], dtype=np.float32)
"""Weights of the standardised sentence features: dense and BM25 score of the sentence, of its best chunk."""
ANSWER_TYPE_WEIGHT = 0.6
"""Bonus (in standard deviations) for a sentence holding the kind of thing asked for: a date for 'when', a number for 'how many'."""

_TIME_QUESTION = re.compile(
    r"\b(when|what (year|date|time|day|month|decade|century)|which (year|date|day|month|decade|century))\b", re.I
)
_NUMBER_QUESTION = re.compile(
    r"\b(how (many|much|long|far|old|big|large|tall|high|often)|what (percentage|percent|number|amount|age|share))\b", re.I
)
_HAS_TIME = re.compile(
    r"\b(1[5-9]\d\d|20\d\d)s?\b|\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d|\b(century|yesterday|today|"
    r"tomorrow|monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b|\b\d{1,2}(st|nd|rd|th)\b",
    re.I,
)
_HAS_NUMBER = re.compile(
    r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|thousand|"
    r"million|billion|dozen|half)\b",
    re.I,
)


def _query_tokens(question: str) -> list[str]:
    return tokenize([question])[0]


@dataclass(frozen=True)
class ArticleRecord:
    path: str
    title: str
    date: str | None


@dataclass(frozen=True)
class RankedSentence:
    """A candidate sentence with its fused score and the raw evidence behind it."""

    row: int
    score: float
    dense: float
    """Cosine of the question with the sentence read in its chunk."""
    chunk_dense: float
    """Cosine of the question with the best chunk holding the sentence."""
    keyword_coverage: float
    """Share of the question's BM25 weight found in the sentence's best chunk."""


class LoadedIndex:
    """One generation of the index, read into memory and ready to search."""

    def __init__(self, generation: Path):
        self.generation = generation
        self.manifest = read_manifest(generation)
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
            self.chunk_keywords = KeywordIndex(rows.chunks.terms)
            self.sentence_keywords = KeywordIndex(rows.sentences.terms)
            self.dense_search = self._dense_search()
        except (OSError, RuntimeError, ValueError, KeyError, sqlite3.DatabaseError) as error:
            raise IndexCorruptError(
                f"the index in {generation} cannot be read ({error}); run `qa index --rebuild`"
            ) from None

    def _dense_search(self):
        """Exact inner-product search over the chunk vectors, or the generation's IVF index when it has one."""
        import faiss

        approximate = self.manifest.get("approximate")
        if approximate is None:
            search = faiss.IndexFlatIP(self.chunk_vectors.shape[1])
            search.add(self.chunk_vectors)
            return search
        search = faiss.read_index(str(self.generation / APPROXIMATE_FILE))
        search.nprobe = approximate["probes"]
        if search.ntotal != len(self.chunk_ids):
            raise SegmentError(f"the IVF index holds {search.ntotal} chunks, not {len(self.chunk_ids)}")
        return search

    def _load_tables(self, database: Path) -> None:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            self.articles = {
                article_id: ArticleRecord(path, title, date)
                for article_id, path, title, date in db.execute("SELECT id, path, title, date FROM articles")
            }
            sentences = db.execute(
                "SELECT id, article_id, position, start, end, text, sha1 FROM sentences ORDER BY id"
            ).fetchall()
            chunks = db.execute("SELECT id, article_id, first_position, last_position FROM chunks ORDER BY id").fetchall()
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
        self.chunk_ids = np.array([row[0] for row in chunks], dtype=np.int64)
        self.chunk_article = np.array([row[1] for row in chunks], dtype=np.int64)
        self.chunk_first_row = np.array([first_row[a] + first for _, a, first, _ in chunks], dtype=np.int64)
        self.chunk_last_row = np.array([first_row[a] + last for _, a, _, last in chunks], dtype=np.int64)

    @property
    def articles_dir(self) -> Path:
        return Path(self.manifest["articles_dir"])

    def article_of(self, row: int) -> ArticleRecord:
        return self.articles[int(self.sentence_article[row])]

    def encode_query(self, text: str) -> np.ndarray:
        """The query vector of `text`, from the model and backend that embedded this index."""
        from .embeddings import get_embedder

        return get_embedder(self.manifest["model"], self.manifest["backend"]).encode_queries([text])[0]

    def rank(self, question: str, query_vector: np.ndarray) -> list[RankedSentence]:
        """Sentences from the best chunks, most relevant first."""
        all_tokens = _query_tokens(question)
        tokens = [t for t in all_tokens if t in self.chunk_keywords]
        per_token = {t: self.chunk_keywords.term_scores(t) for t in set(tokens)}
        chunk_keyword = sum((per_token[t] for t in tokens), np.zeros(len(self.chunk_ids), dtype=np.float32))
        depth = min(FIRST_STAGE_DEPTH, len(self.chunk_ids))
        dense_ids = self._dense_rows(query_vector, depth)
        keyword_ids = np.argsort(-chunk_keyword)[:depth] if tokens else np.array([], dtype=np.int64)
        fused: dict[int, float] = {}
        for ranking in (dense_ids, keyword_ids):
            for rank, chunk in enumerate(ranking):
                if chunk >= 0:
                    fused[int(chunk)] = fused.get(int(chunk), 0.0) + 1.0 / (RRF_K + rank + 1)
        top_chunks = np.array(sorted(fused, key=fused.get, reverse=True)[:FUSED_CHUNKS], dtype=np.int64)
        chunk_dense = self.chunk_vectors[top_chunks] @ query_vector
        chunk_coverage = self._coverage(all_tokens, per_token, top_chunks)

        candidate: dict[int, tuple[float, float, float]] = {}
        for chunk, dense, coverage in zip(top_chunks, chunk_dense, chunk_coverage):
            for row in range(self.chunk_first_row[chunk], self.chunk_last_row[chunk] + 1):
                old = candidate.get(row, (-1.0, 0.0, 0.0))
                candidate[row] = (max(old[0], float(dense)), max(old[1], float(chunk_keyword[chunk])), max(old[2], coverage))
        rows = np.fromiter(candidate, dtype=np.int64)
        context = np.array([candidate[r] for r in rows], dtype=np.float32).reshape(-1, 3)
        sentence_dense = self.sentence_vectors[rows] @ query_vector
        sentence_keyword = self.sentence_keywords.scores(tokens, rows)
        features = np.stack([sentence_dense, sentence_keyword, context[:, 0], context[:, 1]])
        scores = FEATURE_WEIGHTS @ np.apply_along_axis(_zscore, 1, features)
        scores += ANSWER_TYPE_WEIGHT * _answer_type_match(question, [self.sentence_text[r] for r in rows])
        scores -= LENGTH_WEIGHT * _zscore(np.log([len(self.sentence_text[r]) for r in rows]))
        order = np.argsort(-scores)
        return [
            RankedSentence(
                row=int(rows[i]),
                score=float(scores[i]),
                dense=float(sentence_dense[i]),
                chunk_dense=float(context[i, 0]),
                keyword_coverage=float(context[i, 2]),
            )
            for i in order
        ]

    def _dense_rows(self, query_vector: np.ndarray, depth: int) -> np.ndarray:
        """Positions of the `depth` chunks nearest the query (-1 where an approximate search found fewer)."""
        _, found = self.dense_search.search(query_vector[None, :], depth)
        if self.manifest.get("approximate") is None:
            return found[0]
        rows = np.searchsorted(self.chunk_ids, found[0])
        return np.where(found[0] >= 0, rows, -1)

    def _coverage(self, all_tokens: list[str], per_token: dict[str, np.ndarray], chunks: np.ndarray) -> np.ndarray:
        """For each chunk, the share of the question's term weight (IDF) that it contains; a term found
        nowhere in the articles weighs as much as the rarest term there."""
        n_chunks = len(self.chunk_ids)
        rarest = float(np.log(1 + (n_chunks - 0.5) / 1.5))
        weights, present = [], []
        for token in dict.fromkeys(all_tokens):
            if token in per_token:
                found = per_token[token] > 0
                frequency = int(found.sum())
                weights.append(float(np.log(1 + (n_chunks - frequency + 0.5) / (frequency + 0.5))))
                present.append(found[chunks])
            else:
                weights.append(rarest)
                present.append(np.zeros(len(chunks), dtype=bool))
        if not weights:
            return np.zeros(len(chunks), dtype=np.float32)
        weight = np.array(weights, dtype=np.float32)
        return (weight @ np.array(present, dtype=np.float32)) / weight.sum()


def _zscore(values: np.ndarray) -> np.ndarray:
    spread = float(values.std())
    return (values - values.mean()) / spread if spread > 1e-9 else np.zeros_like(values)


def _answer_type_match(question: str, texts: list[str]) -> np.ndarray:
    """1 for sentences holding a date when the question asks 'when', or a number when it asks 'how many'."""
    if _TIME_QUESTION.search(question):
        cue = _HAS_TIME
    elif _NUMBER_QUESTION.search(question):
        cue = _HAS_NUMBER
    else:
        return np.zeros(len(texts), dtype=np.float32)
    return np.array([1.0 if cue.search(text) else 0.0 for text in texts], dtype=np.float32)


_cache_lock = threading.Lock()
_loaded: dict[str, LoadedIndex] = {}


def load_index(index_dir: str | None = None) -> LoadedIndex:
    """The live generation of the index, loaded once per process and reloaded when a rebuild replaces it."""
    folder = config.index_dir(index_dir)
    generation = current_generation(folder)
    if generation is None:
        raise IndexNotFoundError(
            f"no index in {folder!r}: build it with `qa index --articles DIR --index {folder}` (or `make run`)"
        )
    key = str(Path(folder).resolve())
    with _cache_lock:
        loaded = _loaded.get(key)
        if loaded is not None and loaded.generation == generation:
            return loaded
        logger.info("loading index %s", generation)
        try:
            loaded = LoadedIndex(generation)
        except IndexCorruptError:
            newer = current_generation(folder)
            if newer is None or newer == generation:
                raise
            logger.info("index %s was replaced while loading; loading %s", generation, newer)
            loaded = LoadedIndex(newer)  # a rebuild replaced (and tidied away) the generation being read
        _loaded[key] = loaded
        return loaded
