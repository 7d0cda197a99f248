"""Short answers: the exact words of a quoted sentence that answer the question, placed in the article and checked."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
                 minimum: float) -> ShortAnswer | None:
    """The most likely short answer in the quoted sentences, or None when the question wants none or its confidence
    (the chance that its sentence answers, a softmax of the ranked sentences' scores, times the span's chance within
    it) is below `minimum`."""
    if not quoted or not expects_span(question) or all(s.answer_span is None for s in ranked):
        return None
    chances = _softmax(np.array([s.score for s in ranked], dtype=np.float64))
    chance_of = {s.id: float(p) for s, p in zip(ranked, chances)}
    scored = [(chance_of.get(q.sentence.id, 0.0) * q.sentence.answer_span.probability, q)
              for q in quoted if q.sentence.answer_span is not None]
    if not scored:
        return None
    confidence, best = max(scored, key=lambda pair: pair[0])
    if confidence < minimum:
        return None
    placed = _in_article(best)
    if placed is None:
        return None
    start, end = placed
    return ShortAnswer(best.article_text[start:end], best.path, start, end, round(confidence, 4))


def _in_article(quoted: QuotedSentence) -> tuple[int, int] | None:
    """The span's offsets in the article, from its offsets in the sentence as indexed (white space folded), or None
    when the article's sentence does not fold to the indexed one."""
    sentence, span = quoted.sentence, quoted.sentence.answer_span
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
