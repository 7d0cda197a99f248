"""Retrieval: ranking the sentences of a store against a question (hybrid first stage, then learned features)."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .keywords import TermCounts, bm25_terms, concatenated_ranges, idf, query_terms
from .memory import return_freed_memory
from .reranker import AnswerSpan, Reranker, question_text
from .scope import Scope
from .store import FORMAT_VERSION, ChunkRows, IndexCorruptError, IndexReader, KeywordStats, SentenceRows, open_store

logger = logging.getLogger(__name__)

FIRST_STAGE_DEPTH = 50
"""Chunks each retriever (dense, BM25) contributes before fusion."""
FUSED_CHUNKS = 30
"""Chunks, after reciprocal rank fusion, whose sentences are scored."""
WHOLE_ARTICLE = 10**9
"""A last position past the end of any article: a span from 0 to it holds the whole article."""
RANKER_FILE = Path(__file__).with_name("ranker.json")
"""The sentence ranker's weights, trained by bench/train_ranker.py."""
FEATURES = (
    "sentence_dense_z",
    "sentence_keyword_z",
    "chunk_dense_z",
    "chunk_keyword_z",
    "own_keyword_z",
    "sentence_dense",
    "asked_standalone_z",
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
follow-up borrowed, and "asked_standalone" the cosine of the question as asked with the sentence embedded on its own."""
_POSITIONS = 1 << 32
"""More sentence positions than any article has: (article, position) packed into one sortable number."""
RANKED_SENTENCES = 50
"""Sentences `rank` returns at most: enough for the quotes, with room for skipped repeats."""
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
class RankedSentence:
    """A candidate sentence with its score, the evidence behind it, and where it stands."""

    id: int
    score: float
    chunk_dense: float
    """Cosine of the question with the best chunk holding the sentence."""
    keyword_coverage: float
    """Share of the question's BM25 weight found in the sentence's best chunk."""
    article: int
    """The id of the sentence's article."""
    position: int
    start: int
    end: int
    text: str
    sha1: str
    vector: np.ndarray
    relevance: float = float("nan")
    """The reranker's logit for the sentence (NaN when no reranker read it)."""
    answer_span: AnswerSpan | None = None
    """Where the reranker reads the short answer in `text`, were this the sentence that answers."""


@dataclass(frozen=True)
class Focus:
    """What a conversation has been about: its articles, weighted (1 = the most recent), and the sentences
    (article id, position) where its last answer stands."""

    articles: dict[int, float] = field(default_factory=dict)
    anchors: tuple[tuple[int, int], ...] = ()
    followup: bool = False
    """Whether the question leans on the earlier turns (refers back, continues, or is too short to stand alone)."""


@dataclass(frozen=True)
class Query:
    """A question as retrieval reads it: the text searched with (for a follow-up, the question with words borrowed
    from the conversation), the question as the reader asked it, the vector of each, and the conversation's focus."""

    text: str
    vector: np.ndarray
    asked: str
    asked_vector: np.ndarray
    focus: Focus = field(default_factory=Focus)
    context: str = ""
    """What the conversation lends the question when the reranker reads it (see qa.reranker.conversation_context)."""


@dataclass(frozen=True)
class Candidates:
    """The sentences worth scoring for one question, with their features (sentences x FEATURES)."""

    sentences: SentenceRows
    features: np.ndarray
    chunk_dense: np.ndarray
    keyword_coverage: np.ndarray


class LoadedIndex:
    """The live state of a store, ready to rank sentences against questions; it never learns which store it reads."""

    def __init__(self, reader: IndexReader):
        if reader.info.format_version != FORMAT_VERSION:
            raise IndexCorruptError(
                f"the index was built by another version of qa (format {reader.info.format_version}, this one reads "
                f"{FORMAT_VERSION}); run `qa index` to bring it up to date"
            )
        self.reader = reader
        self.info = reader.info
        self.generation = reader.generation
        self._scopes: dict[Scope, set[int]] = {}

    @property
    def articles_dir(self) -> Path:
        return Path(self.info.articles_dir)

    def article_id(self, path: str) -> int | None:
        """The id of the article a citation's `path` names, or None."""
        try:
            return self.reader.article_id(str(Path(path).relative_to(self.articles_dir)))
        except ValueError:
            return None

    def article_sentences(self, article_ids: Sequence[int]) -> SentenceRows:
        """Every sentence of the articles, in reading order."""
        return self.reader.sentences([(int(a), 0, WHOLE_ARTICLE) for a in article_ids])

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) query vectors of `texts`, in one batch, from the model and backend that embedded this index: on ONNX
        Runtime when the model's export is cached (no PyTorch to load), else by the model itself."""
        from .embeddings import get_embedder, query_encoder

        fast = query_encoder(self.info.model, self.info.backend)
        if fast is not None:
            return fast.encode(texts)
        return get_embedder(self.info.model, self.info.backend).encode_texts(texts)

    def query(self, text: str, asked: str | None = None, focus: Focus | None = None, context: str = "") -> Query:
        """`text` ready to rank with: `asked` is the question as the reader typed it (default: `text`); when they
        differ, both are encoded in one batch."""
        asked = text if asked is None else asked
        vectors = self.encode_queries([text] if asked == text else [text, asked])
        return Query(text, vectors[0], asked, vectors[-1], focus or Focus(), context)

    def rank(
        self, query: Query, scope: Scope | None = None, limit: int = RANKED_SENTENCES, reranker: Reranker | None = None
    ) -> list[RankedSentence]:
        """The `limit` best sentences from the best chunks (and from the conversation's articles), most relevant
        first; only from articles in `scope` when it is given. With a `reranker`, only the linear ranker's best
        `reranker.settings.depth` are returned, each scored again with the reranker's relevance added."""
        found = self.candidates(query, scope)
        sentences = found.sentences
        if not len(sentences):
            return []
        scores = found.features @ ranker_weights()
        best = np.argsort(-scores)[:limit]
        relevance = np.full(len(best), np.nan, dtype=np.float32)
        spans: list[AnswerSpan | None] = [None] * len(best)
        if reranker is not None:
            best = best[: reranker.settings.depth]
            reading = reranker.read(question_text(query.asked, query.context),
                                    [(self.reader.article(a).title, sentences.text[i])
                                     for a, i in zip(sentences.article[best].tolist(), best)])
            scores[best] += reranker.settings.weight * reading.relevance
            order = np.argsort(-scores[best], kind="stable")
            best, relevance, spans = best[order], reading.relevance[order], [reading.spans[i] for i in order]
        columns = zip(
            sentences.ids[best].tolist(), scores[best].tolist(), found.chunk_dense[best].tolist(),
            found.keyword_coverage[best].tolist(), sentences.article[best].tolist(), sentences.position[best].tolist(),
            sentences.start[best].tolist(), sentences.end[best].tolist(), [sentences.text[i] for i in best],
            [sentences.sha1[i] for i in best], sentences.vectors[best], relevance.tolist(), spans,
        )
        return [RankedSentence(*values) for values in columns]

    def candidates(self, query: Query, scope: Scope | None = None) -> Candidates:
        """The sentences of the best chunks by fused dense and BM25 rank, and of the focus articles, with features."""
        question, query_vector, asked, focus = query.text, query.vector, query.asked, query.focus
        tokens = list(query_terms(question))
        own_tokens = list(query_terms(asked))
        allowed = self.scope_articles(scope)
        chunk_ids = self.reader.search(query_vector, question, tokens, FIRST_STAGE_DEPTH, FUSED_CHUNKS, allowed)
        chunks = self.reader.chunks(ids=chunk_ids)
        focus_articles = [a for a in focus.articles if allowed is None or a in allowed]
        if focus_articles:
            chunks = _joined(chunks, self.reader.chunks(articles=focus_articles))
        if not len(chunks.ids):
            nothing = np.zeros(0, dtype=np.float32)
            return Candidates(self.reader.sentences([]), np.zeros((0, len(FEATURES)), np.float32), nothing, nothing)
        chunk_dense = chunks.vectors @ query_vector
        terms = sorted(set(tokens))
        chunk_terms, chunk_stats = self._term_scores("chunks", chunks.terms, terms)
        chunk_keyword = chunk_terms @ _repeats(terms, tokens)
        chunk_coverage = _coverage(chunk_terms, chunk_stats)
        sentences = self.reader.sentences(list(zip(chunks.article.tolist(), chunks.first.tolist(), chunks.last.tolist())))
        context = _best_chunk_per_sentence(sentences, chunks, np.stack([chunk_dense, chunk_keyword, chunk_coverage], 1))
        sentence_dense = sentences.vectors @ query_vector
        either = sorted(set(tokens) | set(own_tokens))  # one pass scores both the search text's and the reader's terms
        sentence_terms = self._term_scores("sentences", sentences.terms, either)[0]
        sentence_keyword = sentence_terms @ _repeats(either, tokens)
        own_keyword = sentence_terms @ _repeats(either, own_tokens)
        asked_standalone = sentences.standalone.astype(np.float32) @ query.asked_vector
        texts = sentences.text
        article_focus = np.zeros(len(sentences), dtype=np.float32)
        for article, weight in focus.articles.items():
            article_focus[sentences.article == article] = weight
        at_anchor, near_anchor, after_anchor = _anchor_features(sentences, focus.anchors)
        standardised = _zscore_columns(np.stack(
            [sentence_dense, sentence_keyword, context[:, 0], context[:, 1], own_keyword, asked_standalone,
             np.log([len(text) for text in texts])],
            axis=1,
        ))
        features = np.concatenate(
            [
                standardised[:, :5],
                np.stack(
                    [
                        sentence_dense,
                        standardised[:, 5],
                        _answer_type_match(asked, texts),
                        _cue_match(_PERSON_QUESTION, _HAS_PERSON, asked, texts),
                        _cue_match(_PLACE_QUESTION, _HAS_PLACE, asked, texts),
                        standardised[:, 6],
                        1.0 / (1.0 + sentences.position),
                        article_focus,
                        article_focus * focus.followup,
                        at_anchor,
                        near_anchor,
                        after_anchor,
                    ],
                    axis=1,
                ),
            ],
            axis=1,
        ).astype(np.float32)
        return Candidates(sentences, features, context[:, 0], context[:, 2])

    def scope_articles(self, scope: Scope | None) -> set[int] | None:
        """The ids of the articles in `scope`, or None when there is no scope (every article)."""
        if scope is None:
            return None
        if scope not in self._scopes:
            self._scopes[scope] = {a.id for a in self.reader.articles() if scope.admits(a.path, a.date)}
        return self._scopes[scope]

    def article_coverage(self, text: str, article_id: int) -> float:
        """The share of `text`'s term weight (IDF) found in the article's best chunk; 1 when it has no terms."""
        terms = sorted(set(query_terms(text)))
        if not terms:
            return 1.0
        per_term, stats = self._term_scores("chunks", self.reader.chunks(articles=[article_id]).terms, terms)
        return float(_coverage(per_term, stats).max(initial=0.0))

    def _term_scores(self, kind: str, rows: TermCounts, terms: list[str]) -> tuple[np.ndarray, KeywordStats]:
        """(rows x terms) BM25 contributions of each of the distinct `terms`, with the statistics of the whole
        index, and those statistics."""
        stats = self.reader.keyword_stats(kind, terms)
        return bm25_terms(rows, terms, stats.frequencies, stats.rows, stats.average_length), stats


def _repeats(terms: list[str], tokens: list[str]) -> np.ndarray:
    """How often each of the distinct, sorted `terms` occurs among `tokens`: repeats count again in BM25."""
    counts = Counter(tokens)
    return np.array([counts[term] for term in terms], dtype=np.float32)


def _coverage(per_term: np.ndarray, stats: KeywordStats) -> np.ndarray:
    """For each row, the share of the question's term weight (IDF) that it contains, from its per-term BM25 scores;
    a term found nowhere in the articles weighs as much as the rarest term there."""
    if not per_term.shape[1]:
        return np.zeros(per_term.shape[0], dtype=np.float32)
    frequency = stats.frequencies.astype(np.float64)
    weight = np.where(frequency > 0, idf(frequency, stats.rows), idf(1.0, stats.rows))
    return (((per_term > 0) @ weight) / weight.sum()).astype(np.float32)


def _joined(first: ChunkRows, second: ChunkRows) -> ChunkRows:
    """The chunks of both, each once, ordered by id."""
    ids = np.concatenate([first.ids, second.ids])
    _, keep = np.unique(ids, return_index=True)
    terms = TermCounts.stack([first.terms, second.terms]).rows(keep)
    joined = [np.concatenate([getattr(first, name), getattr(second, name)])[keep]
              for name in ("ids", "article", "first", "last", "vectors")]
    return ChunkRows(*joined, terms)


def _best_chunk_per_sentence(sentences: SentenceRows, chunks: ChunkRows, values: np.ndarray) -> np.ndarray:
    """For each sentence, the highest of each column of `values` (one row per chunk) over the chunks holding it."""
    best = np.full((len(sentences), values.shape[1]), -np.inf, dtype=np.float32)
    keys = sentences.article.astype(np.int64) * _POSITIONS + sentences.position  # ascending: rows are in reading order
    low = np.searchsorted(keys, chunks.article.astype(np.int64) * _POSITIONS + chunks.first, "left")
    high = np.searchsorted(keys, chunks.article.astype(np.int64) * _POSITIONS + chunks.last, "right")
    counts = np.maximum(high - low, 0)
    np.maximum.at(best, concatenated_ranges(low, counts), np.repeat(values, counts, axis=0))
    return best


def _anchor_features(sentences: SentenceRows, anchors: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, ...]:
    """For each sentence: whether it is an anchor, how near the nearest anchor of its article, and whether it
    follows one by up to ANCHOR_REACH sentences."""
    at = np.zeros(len(sentences), dtype=np.float32)
    near = np.zeros(len(sentences), dtype=np.float32)
    after = np.zeros(len(sentences), dtype=np.float32)
    for article, position in anchors:
        distance = np.where(sentences.article == article, sentences.position - position, 10**6)
        at = np.maximum(at, distance == 0)
        near = np.maximum(near, np.exp2(-np.abs(distance) / ANCHOR_REACH))
        after = np.maximum(after, (distance > 0) & (distance <= ANCHOR_REACH))
    return at, near, after


def _zscore_columns(values: np.ndarray) -> np.ndarray:
    """Each column less its mean, over its standard deviation (0 where a column does not vary)."""
    spread = values.std(axis=0)
    return np.where(spread > 1e-9, (values - values.mean(axis=0)) / np.maximum(spread, 1e-9), 0.0)


@lru_cache(maxsize=1)
def ranker_weights() -> np.ndarray:
    """The sentence ranker's weights, one per feature, from qa/ranker.json."""
    stored = learned(RANKER_FILE, "features", FEATURES, "bench/train_ranker.py")
    return np.array(stored["weights"], dtype=np.float32)


def learned(path: Path, inputs_key: str, inputs: tuple[str, ...], script: str, entry: str | None = None) -> dict:
    """A fit stored by a bench script (the whole file, or its `entry`), checked to be over `inputs` (listed under
    `inputs_key`); raises RuntimeError saying to run `script` again when it is not."""
    stored = json.loads(path.read_text(encoding="utf-8"))
    stored = stored.get(entry, {}) if entry is not None else stored
    if tuple(stored.get(inputs_key, ())) != inputs:
        raise RuntimeError(f"{path} holds no fit over these {inputs_key}{f' for {entry}' if entry else ''}; run `python {script}`")
    return stored


def _cue_match(question_cue: re.Pattern, answer_cue: re.Pattern, question: str, texts: list[str]) -> np.ndarray:
    """1 for sentences holding `answer_cue` when the question matches `question_cue`, else 0."""
    if not question_cue.search(question):
        return np.zeros(len(texts), dtype=np.float32)
    return np.array([_holds(answer_cue, text) for text in texts], dtype=np.float32)


@lru_cache(maxsize=200_000)
def _holds(cue: re.Pattern, text: str) -> bool:
    """Whether `text` holds `cue`, remembered: the same sentences are candidates for many questions."""
    return cue.search(text) is not None


def _answer_type_match(question: str, texts: list[str]) -> np.ndarray:
    """1 for sentences holding a date when the question asks 'when', or a number when it asks 'how many'."""
    if _TIME_QUESTION.search(question):
        return _cue_match(_TIME_QUESTION, _HAS_TIME, question, texts)
    return _cue_match(_NUMBER_QUESTION, _HAS_NUMBER, question, texts)


_cache_lock = threading.Lock()
_loaded: dict[str, LoadedIndex] = {}


def load_index(index_dir: str | None = None, store: str | None = None) -> LoadedIndex:
    """The live state of the store (`store`, else $QA_STORE, else the folder `index_dir`), loaded once per process
    and reloaded when a build replaces it."""
    opened = open_store(store, index_dir)
    generation = opened.live()
    if generation is None:
        opened.open()  # raises IndexNotFoundError, saying how to build one
    with _cache_lock:
        loaded = _loaded.get(opened.location)
        if loaded is not None and loaded.generation == generation:
            return loaded
        logger.info("loading index %s from %s", generation, opened.location)
        try:
            loaded = LoadedIndex(opened.open())
        except IndexCorruptError:
            if opened.live() in (None, generation):
                raise
            logger.info("index %s was replaced while loading; loading %s", generation, opened.live())
            loaded = LoadedIndex(opened.open())  # a build replaced (and tidied away) the generation being read
        replacing = opened.location in _loaded
        _loaded[opened.location] = loaded
    if replacing:
        return_freed_memory()  # the replaced index's (what answers under way still hold goes at the next reload)
    return loaded
