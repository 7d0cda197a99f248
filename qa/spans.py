"""Short answers: the exact words of a quoted sentence that answer the question, placed in the article and checked."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .reranker import AnswerSpan
from .retrieval import RankedSentence

NO_SPAN_QUESTION = re.compile(
    r"^\W*(?:(?:and|but|so|then|ok|okay|well|also)\W+)*"
    r"(?:why|how(?!\s+(?:many|much|long|old|far|big|large|tall|often|few|high|deep|wide|fast|heavy|late|early|soon)\b)"
    r"|is|isn't|are|aren't|was|wasn't|were|weren't|am|do|don't|does|doesn't|did|didn't|can|can't|could|will|won't"
    r"|would|shall|should|has|hasn't|have|haven't|had|may|might|must)\b",
    re.IGNORECASE,
)
"""Questions no few words answer: yes or no questions, "why" and "how" (but not "how many", "how long"...)."""


@dataclass(frozen=True)
class ShortAnswer:
    """The answer in a few words: `qa.article_text(path)[start:end] == text`, inside one of the answer's quotes;
    `confidence` is the reader's chance that it is the answer."""

    text: str
    path: str
    start: int
    end: int
    confidence: float


@dataclass(frozen=True)
class QuotedSentence:
    """A ranked sentence that an answer quotes, with the article text it was checked against."""

    sentence: RankedSentence
    path: str
    article_text: str


def expects_span(question: str) -> bool:
    """Whether a few words can answer the question (not a yes or no, "why" or "how" question)."""
    return NO_SPAN_QUESTION.match(question) is None


def short_answer(question: str, ranked: Sequence[RankedSentence], quoted: Sequence[QuotedSentence],
                 read: Callable[[QuotedSentence], AnswerSpan | None], minimum: float) -> ShortAnswer | None:
    """The most likely short answer in the quoted sentences, or None when the question wants none or its confidence
    (the chance that its sentence answers, a softmax of the ranked sentences' scores, times the span's chance within
    it) is below `minimum`. `read` gives the span in a quoted sentence (or None). The sentences are
    read most likely first, and only while one could still give the best answer: a span's
    confidence is at most its sentence's chance, so sentences whose chance is below `minimum` or below the best
    confidence so far are not read."""
    if not expects_span(question):
        return None
    chances = _softmax(np.array([s.score for s in ranked], dtype=np.float64))
    chance_of = {s.id: float(p) for s, p in zip(ranked, chances)}
    best: tuple[float, QuotedSentence, AnswerSpan] | None = None
    for quote in sorted(quoted, key=lambda q: -chance_of.get(q.sentence.id, 0.0)):
        chance = chance_of.get(quote.sentence.id, 0.0)
        if chance < max(minimum, best[0] if best else 0.0):
            break
        span = read(quote)
        if span is not None and (best is None or chance * span.probability > best[0]):
            best = (chance * span.probability, quote, span)
    if best is None or best[0] < minimum:
        return None
    confidence, quote, span = best
    placed = _in_article(quote, span)
    if placed is None:
        return None
    start, end = placed
    return ShortAnswer(quote.article_text[start:end], quote.path, start, end, round(confidence, 4))


def _in_article(quoted: QuotedSentence, span: AnswerSpan) -> tuple[int, int] | None:
    """The span's offsets in the article, from its offsets in the sentence as indexed (white space folded), or None
    when the article's sentence does not fold to the indexed one."""
    sentence = quoted.sentence
    original = quoted.article_text[sentence.start : sentence.end]
    positions = folded_positions(original)
    if "".join(original[i] if not original[i].isspace() else " " for i in positions) != sentence.text:
        return None
    if not 0 <= span.start < span.end <= len(positions):
        return None
    return sentence.start + positions[span.start], sentence.start + positions[span.end - 1] + 1


def folded_positions(original: str) -> list[int]:
    """For each character of `original` with its runs of white space folded to one space, where it stands in
    `original`."""
    positions, after_space = [], False
    for place, character in enumerate(original):
        if character.isspace():
            if after_space:
                continue
            after_space = True
        else:
            after_space = False
        positions.append(place)
    return positions


def _softmax(values: np.ndarray) -> np.ndarray:
    weights = np.exp(values - values.max())
    return weights / weights.sum()
