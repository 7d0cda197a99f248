"""Retrieval: loading a built index and ranking its sentences against a question (dense + BM25, fused)."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from functools import lru_cache
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
from .keywords import KeywordIndex, query_terms
from .segments import SegmentError, gather

logger = logging.getLogger(__name__)

FIRST_STAGE_DEPTH = 50
"""Chunks each retriever (dense, BM25) contributes before fusion."""
FUSED_CHUNKS = 30
"""Chunks, after reciprocal rank fusion, whose sentences are scored."""
RRF_K = 60
SEARCH_THREADS = 1
"""FAISS threads: one question's search is fastest on one thread, where OpenMP's wake-ups cost more than they save
and contend with the model's threads (2.8 ms against 0.7 ms a search of 13,436 chunks beside the model)."""
RANKER_FILE = Path(__file__).with_name("ranker.json")
"""The sentence ranker's weights, trained by bench/train_ranker.py."""
FEATURES = (
    "sentence_dense_z",
    "sentence_keyword_z",
    "chunk_dense_z",
    "chunk_keyword_z",
    "own_keyword_z",
    "sentence_dense",
    "answer_type",
    "person_answer",
    "place_answer",
    "length_z",
    "lead",
    "focus",
    "focus_followup",
    "at_anchor",
    "near_anchor",
    "after_anchor",
)
"""What the ranker sees of each candidate sentence. `_z` features are standardised over the candidates of one
question; "focus" is the weight of the sentence's article in the conversation (0 to 1), "focus_followup" the same
when the question leans on earlier turns; the anchor features say how close the sentence stands to where the last
answer was found in its article; "own_keyword" scores the words of the question as asked, without the context a
follow-up borrowed."""
ANCHOR_REACH = 2.0
"""Sentences this far from the last answer (in sentences) count as half near it."""

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


_PERSON_QUESTION = re.compile(r"^\W*(who|whom|whose)\b|\b(what|which) (is|was) (his|her|the \w+'s) name\b", re.I)
_HAS_PERSON = re.compile(r"(?<=[a-z,] )[A-Z][a-z]+(?: [A-Z][a-z]+)+")
"""Two capitalised words in a row, after a lower-case word: a name within the sentence, not its opening."""
_PLACE_QUESTION = re.compile(r"^\W*where\b|\b(what|which) (city|country|state|town|county|place|region|province)\b", re.I)
_HAS_PLACE = re.compile(r"\b(in|at|from|near|to) (the )?[A-Z][a-z]+")


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
    chunk_dense: float
    """Cosine of the question with the best chunk holding the sentence."""
    keyword_coverage: float
    """Share of the question's BM25 weight found in the sentence's best chunk."""
    article: int
    """The id of the sentence's article."""


@dataclass(frozen=True)
class Focus:
    """What a conversation has been about: its articles, weighted (1 = the most recent), and the sentence rows
    where its last answer stands."""

    articles: dict[int, float] = field(default_factory=dict)
    anchors: tuple[int, ...] = ()
    followup: bool = False
    """Whether the question leans on the earlier turns (refers back, continues, or is too short to stand alone)."""


@dataclass(frozen=True)
class Candidates:
    """The sentences worth scoring for one question, with their features (rows x FEATURES)."""

    rows: np.ndarray
    features: np.ndarray
    chunk_dense: np.ndarray
    keyword_coverage: np.ndarray


class LoadedIndex:
    """One generation of the index, read into memory and ready to search."""

    def __init__(self, generation: Path):
        self.generation = generation
        self.manifest = read_manifest(generation)
        self._article_ids: dict[str, int] | None = None
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

        faiss.omp_set_num_threads(SEARCH_THREADS)
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
        self.article_first_row = first_row
        self.article_row_count = dict(zip(*np.unique(self.sentence_article, return_counts=True)))
        self.chunk_ids = np.array([row[0] for row in chunks], dtype=np.int64)
        self.chunk_article = np.array([row[1] for row in chunks], dtype=np.int64)
        self.chunk_first_row = np.array([first_row[a] + first for _, a, first, _ in chunks], dtype=np.int64)
        self.chunk_last_row = np.array([first_row[a] + last for _, a, _, last in chunks], dtype=np.int64)

    @property
    def articles_dir(self) -> Path:
        return Path(self.manifest["articles_dir"])

    def rows_of_article(self, article_id: int) -> range:
        """The sentence rows of an article, in reading order."""
        first = self.article_first_row.get(article_id, 0)
        return range(first, first + int(self.article_row_count.get(article_id, 0)))

    def article_id(self, path: str) -> int | None:
        """The id of the article stored at `path` (as a citation names it), or None."""
        if self._article_ids is None:
            self._article_ids = {str(self.articles_dir / a.path): i for i, a in self.articles.items()}
        return self._article_ids.get(path)

    def article_of(self, row: int) -> ArticleRecord:
        return self.articles[int(self.sentence_article[row])]

    def encode_query(self, text: str) -> np.ndarray:
        """The query vector of `text`, from the model and backend that embedded this index."""
        from .embeddings import get_embedder

        return get_embedder(self.manifest["model"], self.manifest["backend"]).encode_queries([text])[0]

    def rank(
        self, question: str, query_vector: np.ndarray, focus: Focus | None = None, asked: str | None = None
    ) -> list[RankedSentence]:
        """Sentences from the best chunks (and from the conversation's articles), most relevant first."""
        found = self.candidates(question, query_vector, focus, asked)
        if not len(found.rows):
            return []
        scores = found.features @ ranker_weights()
        order = np.argsort(-scores)
        return [
            RankedSentence(
                row=int(found.rows[i]),
                score=float(scores[i]),
                chunk_dense=float(found.chunk_dense[i]),
                keyword_coverage=float(found.keyword_coverage[i]),
                article=int(self.sentence_article[found.rows[i]]),
            )
            for i in order
        ]

    def candidates(
        self, question: str, query_vector: np.ndarray, focus: Focus | None = None, asked: str | None = None
    ) -> Candidates:
        """The sentences of the best chunks by fused dense and BM25 rank, and of the focus articles, with features.
        `question` is the text searched with; `asked` the question as the reader typed it (default: the same)."""
        focus = focus or Focus()
        asked = question if asked is None else asked
        all_tokens = query_terms(question)
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
        chosen = sorted(fused, key=fused.get, reverse=True)[:FUSED_CHUNKS]
        if focus.articles:
            chosen += [int(c) for c in np.flatnonzero(np.isin(self.chunk_article, list(focus.articles)))]
        top_chunks = np.unique(np.array(chosen, dtype=np.int64))
        if not len(top_chunks):
            nothing = np.zeros(0, dtype=np.float32)
            return Candidates(np.zeros(0, dtype=np.int64), np.zeros((0, len(FEATURES)), np.float32), nothing, nothing)
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
        texts = [self.sentence_text[r] for r in rows]
        articles = self.sentence_article[rows]
        positions = self.sentence_position[rows]
        own_keyword = sentence_keyword if asked == question else self.sentence_keywords.scores(query_terms(asked), rows)
        article_focus = np.array([focus.articles.get(int(a), 0.0) for a in articles], dtype=np.float32)
        at_anchor, near_anchor, after_anchor = self._anchor_features(rows, focus.anchors)
        features = np.stack(
            [
                _zscore(sentence_dense),
                _zscore(sentence_keyword),
                _zscore(context[:, 0]),
                _zscore(context[:, 1]),
                _zscore(own_keyword),
                sentence_dense,
                _answer_type_match(asked, texts),
                _cue_match(_PERSON_QUESTION, _HAS_PERSON, asked, texts),
                _cue_match(_PLACE_QUESTION, _HAS_PLACE, asked, texts),
                _zscore(np.log([len(text) for text in texts])),
                1.0 / (1.0 + positions),
                article_focus,
                article_focus * focus.followup,
                at_anchor,
                near_anchor,
                after_anchor,
            ],
            axis=1,
        ).astype(np.float32)
        return Candidates(rows, features, context[:, 0], context[:, 2])

    def _anchor_features(self, rows: np.ndarray, anchors: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """For each row: whether it is an anchor, how near the nearest anchor of its article, and whether it
        follows one by up to ANCHOR_REACH sentences."""
        at = np.zeros(len(rows), dtype=np.float32)
        near = np.zeros(len(rows), dtype=np.float32)
        after = np.zeros(len(rows), dtype=np.float32)
        for anchor in anchors:
            same = self.sentence_article[rows] == self.sentence_article[anchor]
            distance = np.where(same, self.sentence_position[rows] - self.sentence_position[anchor], 10**6)
            at = np.maximum(at, distance == 0)
            near = np.maximum(near, np.exp2(-np.abs(distance) / ANCHOR_REACH))
            after = np.maximum(after, (distance > 0) & (distance <= ANCHOR_REACH))
        return at, near, after

    def article_coverage(self, text: str, article_id: int) -> float:
        """The share of `text`'s term weight (IDF) found in the article's best chunk; 1 when it has no terms."""
        all_tokens = query_terms(text)
        if not all_tokens:
            return 1.0
        per_token = {t: self.chunk_keywords.term_scores(t) for t in set(all_tokens) if t in self.chunk_keywords}
        chunks = np.flatnonzero(self.chunk_article == article_id)
        return float(self._coverage(all_tokens, per_token, chunks).max(initial=0.0))

    def _dense_rows(self, query_vector: np.ndarray, depth: int) -> np.ndarray:
        """Positions of the `depth` chunks nearest the query (-1 where an approximate search found fewer)."""
        _, found = self.dense_search.search(query_vector[None, :], depth)
        if self.manifest.get("approximate") is None:
            return found[0]
        rows = np.searchsorted(self.chunk_ids, found[0])
        return np.where(found[0] >= 0, rows, -1)

    def _coverage(self, all_tokens: Sequence[str], per_token: dict[str, np.ndarray], chunks: np.ndarray) -> np.ndarray:
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


@lru_cache(maxsize=1)
def ranker_weights() -> np.ndarray:
    """The sentence ranker's weights, one per feature, from qa/ranker.json."""
    stored = json.loads(RANKER_FILE.read_text(encoding="utf-8"))
    if tuple(stored["features"]) != FEATURES:
        raise RuntimeError(f"{RANKER_FILE} was trained on other features; run `python bench/train_ranker.py`")
    return np.array(stored["weights"], dtype=np.float32)


def _cue_match(question_cue: re.Pattern, answer_cue: re.Pattern, question: str, texts: list[str]) -> np.ndarray:
    """1 for sentences holding `answer_cue` when the question matches `question_cue`, else 0."""
    if not question_cue.search(question):
        return np.zeros(len(texts), dtype=np.float32)
    return np.array([1.0 if answer_cue.search(text) else 0.0 for text in texts], dtype=np.float32)


def _answer_type_match(question: str, texts: list[str]) -> np.ndarray:
    """1 for sentences holding a date when the question asks 'when', or a number when it asks 'how many'."""
    if _TIME_QUESTION.search(question):
        return _cue_match(_TIME_QUESTION, _HAS_TIME, question, texts)
    return _cue_match(_NUMBER_QUESTION, _HAS_NUMBER, question, texts)


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
