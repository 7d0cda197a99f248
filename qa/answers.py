"""Answers: turning ranked sentences into verbatim, cited quotes, or abstaining when the articles do not say."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np

from . import config
from .articles import page_source, text_of
from .chunks import MAX_SENTENCE_CHARS
from .followup import QUOTATION_MARKS, EarlierTurn, content_words, read_conversation
from .reader import Reader, get_reader
from .reranker import NO_RERANKER, AnswerSpan, Reranker, conversation_context, get_reranker, question_text
from .retrieval import LoadedIndex, Query, RankedSentence, learned, load_index
from .scope import Scope
from .spans import QuotedSentence, ShortAnswer, short_answer

logger = logging.getLogger(__name__)

ABSTENTION_FILE = Path(__file__).with_name("abstention.json")
"""The single-question abstention boundaries, one per reranker (and one for none), fitted by
bench/calibrate_abstention.py."""
ABSTENTION_EVIDENCE = ("chunk_dense", "keyword_coverage", "sentence_dense")
"""What the boundary weighs of the best sentence: its best chunk's cosine with the question, the share of the
question's keyword weight that chunk holds, and the sentence's own cosine (in its context) ..."""
RERANKED_EVIDENCE = (*ABSTENTION_EVIDENCE, "relevance")
"""... and, with a reranker, the reranker's logit for it."""
FOCUS_TRUSTED = 0.5
"""An article weighing at least this much in the conversation's focus is the one the conversation is about."""
ABSTAIN_FOCUS_DENSE = 0.30
ABSTAIN_FOCUS_COVERAGE = 0.20
"""In that article, abstain only below this cosine and this share of the question's own words' weight (IDF) ..."""
MIN_OWN_WORDS = 2
"""... and only when the question has at least this many words of its own (see followup.content_words)."""
NEAR_DUPLICATE_COSINE = 0.95
MAX_CONVERSATION_TURNS = 20
"""A conversation is read from its last 20 turns: older ones weigh under 1.2% of the last (FOCUS_DECAY ** 20), and a
conversation of hundreds of turns would make every answer slower."""
QUOTE_SCORE_MARGIN = 6.0
"""A further quote is added only while its ranker score (log-odds) is within this margin of the best (with a
reranker, its own quote_margin, as its scores spread wider)."""
ABSTAIN_TEXT = "The articles do not say: nothing in the indexed articles answers this question."
ABSTAIN_SCOPED_TEXT = "The articles in this scope do not say: nothing in them answers this question."

_SPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True)
class Citation:
    """A verbatim quote and exactly where it stands: `qa.article_text(path)[start:end] == quote` (for a UTF-8 .txt or .md
    file, that is `Path(path).read_text(encoding="utf-8")`; for a saved web page, the article extracted from it)."""

    quote: str
    path: str
    title: str
    date: str | None
    start: int
    end: int
    score: float
    url: str | None = None
    """The web address the article was fetched from (saved pages that record it), else None."""


@dataclass(frozen=True)
class Answer:
    """The reply to a question: readable text that quotes and numbers its citations, or an abstention."""

    question: str
    text: str
    citations: list[Citation] = field(default_factory=list)
    abstained: bool = False
    short: ShortAnswer | None = None
    """The answer in a few words, inside one of the quotes, when the reader is confident of it."""

    @property
    def short_citation(self) -> int | None:
        """The number (from 1, as the text numbers them) of the quote that holds the short answer."""
        short = self.short
        if short is None:
            return None
        return next((number for number, c in enumerate(self.citations, start=1)
                     if c.path == short.path and c.start <= short.start and short.end <= c.end), None)


Turn = tuple[str, "str | Answer"]
"""An earlier turn of a conversation: the question and its answer, as qa's `Answer` or as plain text."""


def validate_question(question: str) -> str:
    """The question with surrounding white space removed; raises ValueError saying what is wrong with it."""
    if not isinstance(question, str):
        raise ValueError(f"the question must be text, not {type(question).__name__}")
    question = question.strip()
    if not question:
        raise ValueError("the question is empty: type a question about the articles")
    if len(question) > config.MAX_QUESTION_CHARS:
        raise ValueError(f"the question is {len(question):,} characters long; keep it under {config.MAX_QUESTION_CHARS:,}")
    for character in question:
        category = unicodedata.category(character)
        if (category == "Cc" and character not in "\t\n\r") or category == "Cs":
            raise ValueError(f"the question contains a control or invalid character ({character!r}); remove it")
    return question


def answer(
    question: str,
    *,
    index_dir: str | None = None,
    store: str | None = None,
    top_k: int = config.MAX_QUOTES,
    history: Sequence[Turn] | None = None,
    where: Mapping | None = None,
    reranker: str | None = None,
    reader: str | None = None,
) -> Answer:
    """Answer `question` from the articles in the index, with up to `top_k` cited quotes.

    `history` holds the earlier turns of a conversation as (question, answer) pairs, oldest first, where the
    answer is qa's own `Answer` or plain text (a reader's short reply will do). A follow-up such as "And who
    attended it?" is read in their light, and the search stays on the articles the conversation has been about
    unless the question clearly changes subject.

    The index is read from `store` (else $QA_STORE; `milvus:PATH` or a Milvus server's `http(s)://HOST:PORT`),
    or from the folder `index_dir` (else $QA_INDEX, else `index`) when neither is set.

    `where` limits the answer to some of the articles: `{"folder": "business"}` (a sub-folder of the articles
    folder), `{"since": "2024-11-01", "until": "2024-11-30"}` (inclusive; either end may be left out; an article
    without a known date is outside every range), `{"articles": [paths]}`, or any combination. When nothing in the
    scope answers, the answer says "The articles in this scope do not say".

    `reranker` names the cross-encoder that reads the best candidate sentences against the question (else
    $QA_RERANKER, else the shipped one); "none" ranks with the linear ranker alone. `reader` names the model that
    points at the short answer inside the quotes (else $QA_READER, else the shipped one); "none" leaves it to the
    reranker's span head when it has one (the shipped reranker has none), and otherwise gives none.
    """
    question = validate_question(question)
    if not 1 <= top_k <= 10:
        raise ValueError(f"top_k must be between 1 and 10, not {top_k}")
    index = load_index(index_dir, store)
    scope = Scope.of(where, index.articles_dir)
    abstention = ABSTAIN_TEXT if scope is None else ABSTAIN_SCOPED_TEXT
    cross_encoder = get_reranker(reranker)
    query = read_question(index, question, history)
    ranked = index.rank(query, scope, reranker=cross_encoder)
    if not ranked or _off_topic(index, query, ranked[0], cross_encoder.name if cross_encoder else NO_RERANKER):
        return Answer(question=question, text=abstention, abstained=True)
    margin = cross_encoder.settings.quote_margin if cross_encoder else QUOTE_SCORE_MARGIN
    citations, quoted = _cite(index, _select(ranked, top_k, margin))
    if not citations:
        return Answer(question=question, text=abstention, abstained=True)
    short = _short_answer(index, query, ranked, quoted, cross_encoder, get_reader(reader))
    return Answer(question=question, text=_compose(citations), citations=citations, short=short)


def _short_answer(index: LoadedIndex, query: Query, ranked: list[RankedSentence], quoted: list[QuotedSentence],
                  cross_encoder: Reranker | None, reader: Reader | None) -> ShortAnswer | None:
    """The short answer inside the quotes: as the span reader reads them when there is one, else as the reranker's
    span head read them; None when neither has a calibrated confidence."""
    if reader is not None and reader.settings.short_answer_confidence is not None:
        question = question_text(query.asked, query.context)

        def read(quote: QuotedSentence) -> AnswerSpan | None:
            return reader.read(question, [(index.reader.article(quote.sentence.article).title, quote.sentence.text)])[0]

        return short_answer(query.asked, ranked, quoted, read, reader.settings.short_answer_confidence)
    if cross_encoder is not None and cross_encoder.settings.short_answer_confidence is not None:
        return short_answer(query.asked, ranked, quoted, lambda quote: quote.sentence.answer_span,
                            cross_encoder.settings.short_answer_confidence)
    return None


def read_question(index: LoadedIndex, question: str, history: Sequence[Turn] | None) -> Query:
    """The question as it is searched in its conversation (its last MAX_CONVERSATION_TURNS turns): the text and its
    vector, the question as asked and its vector, and the conversation's focus."""
    turns = [_earlier_turn(*_pair(turn)) for turn in history or []][-MAX_CONVERSATION_TURNS:]
    search_text, focus = read_conversation(index, question, turns)
    return index.query(search_text, question, focus, conversation_context([(t.question, t.answer) for t in turns]))


def _pair(turn: Turn) -> Turn:
    """The turn, checked to be a (question, answer) pair; raises ValueError saying what is wrong."""
    if not isinstance(turn, (tuple, list)) or len(turn) != 2 or not isinstance(turn[0], str):
        raise ValueError(f"each history turn must be a (question, answer) pair, not {turn!r:.80}")
    return turn[0], turn[1]


def _earlier_turn(question: str, reply: str | Answer) -> EarlierTurn:
    """A conversation turn as follow-up reading takes it: qa's own answers keep the spans they cited."""
    if isinstance(reply, Answer):
        return EarlierTurn(question, reply.text, tuple((c.path, c.start, c.end) for c in reply.citations))
    return EarlierTurn(question, str(reply))


def _off_topic(index: LoadedIndex, query: Query, best: RankedSentence, reranker: str) -> bool:
    """True when even the best evidence is too far from the question, in meaning and in wording, to answer it.

    A question that stands on its own (not a follow-up), in a conversation too, is refused by the reranker's
    single-question boundary unless its best sentence stands in the article the conversation is now about ("Who
    painted the Mona Lisa?" after questions on a burglary). Then, when the best sentence stands in an article the
    conversation is about, a question with almost no words of its own ("Why?", "What was it called?") asks about that
    article and is answered; one with words of its own is refused only when that article holds few of them and the
    best chunk is far in meaning. Otherwise the learned boundary over the best sentence's evidence decides: the
    reranker's for a single question, and the one without the reranker's relevance for a question in a conversation
    (its relevance runs lower there: with it, 3.5% of the CNN conversations' answerable questions were refused)."""
    evidence = answer_evidence(best, query)
    if reranker != NO_RERANKER and stands_alone(query, best) and below_boundary(evidence, abstention_boundary(reranker)):
        return True
    if query.focus.articles.get(best.article, 0.0) >= FOCUS_TRUSTED:
        own_words = content_words(query.asked)
        return (
            len(own_words) >= MIN_OWN_WORDS
            and best.chunk_dense < ABSTAIN_FOCUS_DENSE
            and index.article_coverage(" ".join(own_words), best.article) < ABSTAIN_FOCUS_COVERAGE
        )
    if query.context:  # the reranker's boundary was fitted on single questions; a follow-up is judged without it
        return bool(below_boundary(evidence[: len(ABSTENTION_EVIDENCE)], abstention_boundary()))
    return bool(below_boundary(evidence, abstention_boundary(reranker)))


def stands_alone(query: Query, best: RankedSentence) -> bool:
    """Whether the question is judged as a single question although asked in a conversation: it does not lean on
    the earlier turns, and its best sentence is outside the article the conversation is now about."""
    return not query.focus.followup and query.focus.articles.get(best.article, 0.0) < 1.0


def answer_evidence(best: RankedSentence, query: Query) -> np.ndarray:
    """The best sentence's ABSTENTION_EVIDENCE, and its relevance when a reranker read it (RERANKED_EVIDENCE)."""
    evidence = [best.chunk_dense, best.keyword_coverage, float(best.vector @ query.vector)]
    return np.array(evidence if np.isnan(best.relevance) else [*evidence, best.relevance], dtype=np.float32)


def below_boundary(evidence: np.ndarray, boundary: tuple[np.ndarray, float]) -> np.ndarray:
    """Whether the evidence (ABSTENTION_EVIDENCE, one row or many) falls below the boundary (weights, bias): there
    qa abstains."""
    weights, bias = boundary
    return evidence @ weights + bias < 0


@lru_cache(maxsize=None)
def abstention_boundary(reranker: str = NO_RERANKER) -> tuple[np.ndarray, float]:
    """The weights and bias of the single-question abstention boundary with that reranker, from qa/abstention.json."""
    evidence = ABSTENTION_EVIDENCE if reranker == NO_RERANKER else RERANKED_EVIDENCE
    script = f"bench/calibrate_abstention.py --reranker {reranker}"
    stored = learned(ABSTENTION_FILE, "evidence", evidence, script, entry=reranker)
    return np.array(stored["weights"], dtype=np.float32), float(stored["bias"])


def _select(ranked: list[RankedSentence], top_k: int, margin: float) -> list[RankedSentence]:
    """The best `top_k` sentences within `margin` of the best score, skipping repeats of a sentence already chosen
    (same or nearly same text)."""
    chosen: list[RankedSentence] = []
    seen_hashes: set[str] = set()
    for candidate in ranked:
        if len(chosen) == top_k or candidate.score < ranked[0].score - margin:
            break
        if candidate.sha1 in seen_hashes or any(
            float(candidate.vector @ c.vector) > NEAR_DUPLICATE_COSINE for c in chosen
        ):
            continue
        seen_hashes.add(candidate.sha1)
        chosen.append(candidate)
    return chosen


def _cite(index: LoadedIndex, chosen: list[RankedSentence]) -> tuple[list[Citation], list[QuotedSentence]]:
    """Quotes for the chosen sentences, adjacent ones merged while the quote stays within MAX_SENTENCE_CHARS (the
    longest a sentence may be, so that a run of text without punctuation is not quoted whole), most relevant first,
    checked against the files as they are now; and the sentences quoted, with the text they were checked against. In
    a file changed since it was indexed, a sentence is quoted where its text stands now, and left out if the file no
    longer holds it."""
    files: dict[int, _ArticleFile | None] = {}
    placed = []
    for sentence in chosen:
        if sentence.article not in files:
            files[sentence.article] = _article_file(index, sentence.article)
        current = files[sentence.article]
        moved = _placed(current.text, sentence) if current is not None else None
        if moved is None:
            if current is None:
                _warn_once(index, index.reader.article(sentence.article).path, "is gone or cannot be read")
            else:
                _warn_once(index, current.path, "no longer holds a sentence it was indexed with")
            continue
        placed.append(moved)
    groups: list[list[RankedSentence]] = []
    for sentence in sorted(placed, key=lambda s: (s.article, s.start)):
        previous = groups[-1][-1] if groups else None
        if (previous is not None and _adjacent(previous, sentence, files[sentence.article].text)
                and sentence.end - groups[-1][0].start <= MAX_SENTENCE_CHARS):
            groups[-1].append(sentence)
        else:
            groups.append([sentence])
    groups.sort(key=lambda group: -max(s.score for s in group))
    citations, quoted = [], []
    for group in groups:
        current = files[group[0].article]
        start, end = group[0].start, group[-1].end
        citations.append(
            Citation(
                quote=current.text[start:end],
                path=current.path,
                title=current.title,
                date=current.date,
                start=start,
                end=end,
                score=round(max(s.score for s in group), 4),
                url=current.url,
            )
        )
        quoted.extend(QuotedSentence(s, current.path, current.text) for s in group)
    return citations, quoted


_warned: WeakKeyDictionary[LoadedIndex, set[str]] = WeakKeyDictionary()


def _warn_once(index: LoadedIndex, path: str, what: str) -> None:
    """Say once per index that a file no longer holds what was indexed from it (every answer citing it would else)."""
    warned = _warned.setdefault(index, set())
    if path not in warned:
        warned.add(path)
        logger.warning("%s %s; what it no longer holds is not quoted until the index is updated "
                       "(`qa serve` does so on its own; else run `qa index`)", path, what)


@dataclass(frozen=True)
class _ArticleFile:
    """An indexed article's file as it is now: its article text and source URL, with the indexed title and date."""

    path: str
    text: str
    url: str | None
    title: str
    date: str | None


def _article_file(index: LoadedIndex, article_id: int) -> _ArticleFile | None:
    """The article's file as it is now, or None when it is gone or unreadable."""
    article = index.reader.article(article_id)
    path = index.articles_dir / article.path
    try:
        data = path.read_bytes()
        return _ArticleFile(str(path), text_of(data, path.suffix), page_source(data), article.title, article.date)
    except (OSError, ValueError):
        return None


def _placed(text: str, sentence: RankedSentence) -> RankedSentence | None:
    """The sentence at its place in `text`: where it was indexed if it still stands there, else where its words now
    stand (white space aside; the nearest such place), else None."""
    if _fold(text[sentence.start : sentence.end]) == _fold(sentence.text):
        return sentence
    pattern = re.compile(r"\s+".join(re.escape(word) for word in sentence.text.split()))
    found = min(pattern.finditer(text), key=lambda match: abs(match.start() - sentence.start), default=None)
    return None if found is None else replace(sentence, start=found.start(), end=found.end())


def _adjacent(first: RankedSentence, second: RankedSentence, text: str) -> bool:
    """Sentences of one article with only white space (at most two characters) between them."""
    gap = text[first.end : second.start]
    return first.article == second.article and len(gap) <= 2 and not gap.strip()


def _fold(text: str) -> str:
    return _SPACE_RUN.sub(" ", text).strip()


def _compose(citations: list[Citation]) -> str:
    return "\n".join(f"{quoted(_fold(c.quote))} [{number}]" for number, c in enumerate(citations, start=1))


def quoted(quote: str) -> str:
    """The quote in quotation marks, unless it opens or closes with one of its own (“…,” the minister said.)."""
    return quote if quote[:1] in QUOTATION_MARKS or quote[-1:] in QUOTATION_MARKS else f"“{quote}”"

