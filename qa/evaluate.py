"""Evaluation: scoring `answer()` on a question set (hits, right article, abstentions, integrity, quote length, latency)."""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import config
from .answers import Answer, Turn, answer
from .articles import article_text
from .followup import normalize
from .retrieval import load_index

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)

@dataclass(frozen=True)
class Question:
    """One question of a set; `history` holds the conversation's earlier (question, answer) turns, oldest first,
    and `story` names the article file that answers it, when the set says."""

    id: str
    question: str
    gold: list[list[str]]
    answerable: bool
    history: list[tuple[str, str]] = field(default_factory=list)
    story: str | None = None


@dataclass
class Tally:
    """Counts over one group of questions (all, first turns, follow-ups)."""

    answerable: int = 0
    answerable_hits: int = 0
    right_article: int = 0
    with_story: int = 0
    unanswerable: int = 0
    abstention_hits: int = 0
    false_abstentions: int = 0

    def add(self, question: Question, reply: Answer, hit: bool) -> None:
        if question.answerable:
            self.answerable += 1
            self.answerable_hits += hit
            self.false_abstentions += reply.abstained
            if question.story:
                self.with_story += 1
                self.right_article += from_story(question, reply)
        else:
            self.unanswerable += 1
            self.abstention_hits += hit

    def lines(self, prefix: str) -> list[str]:
        """The report's lines for this group, each label preceded by `prefix`."""
        counts = [("answerable hits", self.answerable_hits, self.answerable)]
        if self.with_story:
            counts.append(("right article", self.right_article, self.with_story))
        counts += [
            ("false abstentions", self.false_abstentions, self.answerable),
            ("abstentions", self.abstention_hits, self.unanswerable),
        ]
        return [f"{prefix}{label:21s}{part}/{whole} ({_percent(part, whole)})" for label, part, whole in counts]


@dataclass
class EvalReport:
    """Scores of one question set, overall and split into first turns and follow-ups."""

    overall: Tally = field(default_factory=Tally)
    first_turns: Tally = field(default_factory=Tally)
    follow_ups: Tally = field(default_factory=Tally)
    citations: int = 0
    intact_citations: int = 0
    quoted_characters: list[int] = field(default_factory=list)
    short_answers: int = 0
    intact_short_answers: int = 0
    short_on_abstentions: int = 0
    exact_matches: float = 0.0
    f1_total: float = 0.0
    """Sums over the answerable questions of the short answers' exact match and token F1 (0 without one)."""
    latencies_ms: list[float] = field(default_factory=list)
    startup_ms: float = 0.0
    misses: list[str] = field(default_factory=list)

    @property
    def integrity(self) -> float:
        return self.intact_citations / self.citations if self.citations else 1.0

    def summary(self) -> str:
        latencies = np.array(self.latencies_ms or [0.0])
        lines = self.overall.lines("")
        if self.follow_ups.answerable + self.follow_ups.unanswerable:
            lines += ["", *self.first_turns.lines("first turns: "), "", *self.follow_ups.lines("follow-ups:  "), ""]
        lines += [
            f"citation integrity   {self.intact_citations}/{self.citations} ({self.integrity:.1%})",
            f"mean quoted chars    {np.mean(self.quoted_characters or [0]):.0f} (per answered question, all quotes together)",
            *self.short_lines(),
            f"latency p50 / p95    {np.percentile(latencies, 50):.1f} ms / {np.percentile(latencies, 95):.1f} ms"
            f" (after {self.startup_ms:.0f} ms loading the model and index)",
        ]
        return "\n".join(lines)


    def add_short(self, question: Question, reply: Answer) -> None:
        """Count the reply's short answer: its integrity, and against the gold answers of an answerable question."""
        if reply.short is None:
            return
        self.short_answers += 1
        self.intact_short_answers += short_is_intact(reply)
        self.short_on_abstentions += reply.abstained
        if question.answerable:
            golds = [alternative for group in question.gold for alternative in group]
            self.exact_matches += exact_match(reply.short.text, golds)
            self.f1_total += token_f1(reply.short.text, golds)

    def short_lines(self) -> list[str]:
        answerable = self.overall.answerable
        return [
            f"short answers        {self.short_answers}/{answerable + self.overall.unanswerable}; over the answerable "
            f"questions: exact match {_percent(round(self.exact_matches), answerable)}, F1 {_percent(round(self.f1_total), answerable)}",
            f"short integrity      {self.intact_short_answers}/{self.short_answers} inside a quote and exact;"
            f" {self.short_on_abstentions} on abstentions",
        ]


def answer_tokens(text: str) -> list[str]:
    """SQuAD's normalisation of an answer: lower case, no punctuation, no articles (a, an, the), split at spaces."""
    text = "".join(character for character in normalize(text) if character not in _PUNCTUATION)
    return _ARTICLES.sub(" ", text).split()


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the prediction equals one of the gold answers after SQuAD's normalisation, else 0.0."""
    return float(any(answer_tokens(prediction) == answer_tokens(gold) for gold in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best token F1 of the prediction against any gold answer, after SQuAD's normalisation."""
    predicted = answer_tokens(prediction)
    best = 0.0
    for gold in golds:
        expected = answer_tokens(gold)
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def load_questions(path: str | Path) -> list[Question]:
    """Questions in JSON lines: question, gold (groups of alternatives), answerable; optionally history and story."""
    questions = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            questions.append(
                Question(
                    id=str(record.get("id", number)),
                    question=record["question"],
                    gold=record.get("gold", []),
                    answerable=bool(record.get("answerable", True)),
                    history=[(str(q), str(a)) for q, a in record.get("history", [])],
                    story=record.get("story"),
                )
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a question record ({error})") from None
    return questions


def _counted_quotes(question: Question, reply: Answer, top_k: int) -> list[str]:
    """The first `top_k` quotes, keeping only those from the question's own story when it names one."""
    citations = reply.citations[:top_k]
    if question.story:
        citations = [c for c in citations if _in_story(c, question.story)]
    return [normalize(c.quote) for c in citations]


def is_hit(question: Question, reply: Answer, top_k: int = config.MAX_QUOTES) -> bool:
    """An answerable question hits when every gold group has an alternative inside one of the first `top_k`
    quotes (quotes from its own story, when it names one); an unanswerable one when the answer abstains."""
    if not question.answerable:
        return reply.abstained and not reply.citations
    quotes = _counted_quotes(question, reply, top_k)
    return all(any(normalize(alternative) in quote for alternative in group for quote in quotes) for group in question.gold)


def from_story(question: Question, reply: Answer, top_k: int = config.MAX_QUOTES) -> bool:
    """Whether one of the first `top_k` quotes comes from the question's own story file."""
    return any(_in_story(c, question.story) for c in reply.citations[:top_k])


def _in_story(citation, story: str) -> bool:
    return Path(citation.path).name == story


def short_is_intact(reply: Answer) -> bool:
    """Whether the short answer is the exact article text at its offsets, inside one of the reply's quotes."""
    short = reply.short
    try:
        exact = article_text(short.path)[short.start : short.end] == short.text
    except (OSError, ValueError):
        return False
    return exact and reply.short_citation is not None


def citation_is_intact(citation) -> bool:
    try:
        return article_text(citation.path)[citation.start : citation.end] == citation.quote
    except (OSError, ValueError):
        return False


class _SelfHistory:
    """Earlier turns as qa itself answered them: each conversation's questions asked once, in order."""

    def __init__(self, ask: Callable[[str, Sequence[Turn]], Answer]):
        self.ask = ask
        self.answers: dict[tuple, Answer] = {}

    def turns(self, question: Question) -> list[Turn]:
        turns: list[Turn] = []
        for number, (earlier, _) in enumerate(question.history):
            key = (question.story, tuple(q for q, _ in question.history[: number + 1]))
            if key not in self.answers:
                self.answers[key] = self.ask(earlier, turns)
            turns.append((earlier, self.answers[key]))
        return turns


def evaluate(
    questions: list[Question], index_dir: str | None = None, *, store: str | None = None, self_history: bool = False,
    where: Mapping | None = None,
) -> EvalReport:
    """Ask every question, with its conversation's earlier turns, and score the answers.

    By default the earlier turns are the set's own (`Question.history`); with `self_history` they are the
    set's earlier questions with the answers qa gave to them, as the web chat builds them.
    """
    report = EvalReport()
    started = time.perf_counter()
    load_index(index_dir, store).encode_queries(["warm up"])
    report.startup_ms = (time.perf_counter() - started) * 1000

    def ask(text: str, history: Sequence[Turn]) -> Answer:
        try:
            return answer(text, index_dir=index_dir, store=store, history=history, where=where)
        except ValueError:
            return Answer(question=text, text="", abstained=True)

    own = _SelfHistory(ask)
    for question in tqdm(questions, desc="questions", unit="q", disable=None):
        history = own.turns(question) if self_history else question.history
        started = time.perf_counter()
        reply = answer(question.question, index_dir=index_dir, store=store, history=history, where=where)
        report.latencies_ms.append((time.perf_counter() - started) * 1000)
        hit = is_hit(question, reply)
        report.overall.add(question, reply, hit)
        (report.follow_ups if question.history else report.first_turns).add(question, reply, hit)
        if not hit:
            report.misses.append(question.id)
        if not reply.abstained:
            report.quoted_characters.append(sum(len(c.quote) for c in reply.citations))
        report.add_short(question, reply)
        report.citations += len(reply.citations)
        report.intact_citations += sum(citation_is_intact(c) for c in reply.citations)
    return report
