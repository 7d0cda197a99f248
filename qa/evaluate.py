"""Evaluation: scoring `answer()` on a question set (hits, abstentions, citation integrity, quote length, latency)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import config
from .answers import Answer, answer
from .retrieval import load_index

_TYPOGRAPHIC = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "′": "'", "″": '"'})
_SPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    gold: list[list[str]]
    answerable: bool


@dataclass
class EvalReport:
    """Scores of one question set."""

    answerable: int = 0
    answerable_hits: int = 0
    unanswerable: int = 0
    abstention_hits: int = 0
    false_abstentions: int = 0
    citations: int = 0
    intact_citations: int = 0
    quoted_characters: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    startup_ms: float = 0.0
    misses: list[str] = field(default_factory=list)

    @property
    def integrity(self) -> float:
        return self.intact_citations / self.citations if self.citations else 1.0

    def summary(self) -> str:
        latencies = np.array(self.latencies_ms or [0.0])
        lines = [
            f"answerable hits      {self.answerable_hits}/{self.answerable} ({_percent(self.answerable_hits, self.answerable)})",
            f"abstentions          {self.abstention_hits}/{self.unanswerable} ({_percent(self.abstention_hits, self.unanswerable)})",
            f"false abstentions    {self.false_abstentions}/{self.answerable} ({_percent(self.false_abstentions, self.answerable)})",
            f"citation integrity   {self.intact_citations}/{self.citations} ({self.integrity:.1%})",
            f"mean quoted chars    {np.mean(self.quoted_characters or [0]):.0f} (per answered question, all quotes together)",
            f"latency p50 / p95    {np.percentile(latencies, 50):.1f} ms / {np.percentile(latencies, 95):.1f} ms"
            f" (after {self.startup_ms:.0f} ms loading the model and index)",
        ]
        return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def normalize(text: str) -> str:
    """Case-folded, typographic quotes made plain, white space folded: how quotes and gold answers are compared."""
    return _SPACE_RUN.sub(" ", text.translate(_TYPOGRAPHIC)).strip().casefold()


def load_questions(path: str | Path) -> list[Question]:
    """Questions in the JSON-lines format of `dev.jsonl`: question, gold (groups of alternatives), answerable."""
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
                )
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a question record ({error})") from None
    return questions


def is_hit(question: Question, reply: Answer, top_k: int = config.MAX_QUOTES) -> bool:
    """An answerable question hits when every gold group has an alternative inside one of the first
    `top_k` quotes; an unanswerable one hits when the answer abstains with no citations."""
    if not question.answerable:
        return reply.abstained and not reply.citations
    quotes = [normalize(c.quote) for c in reply.citations[:top_k]]
    return all(any(normalize(alternative) in quote for alternative in group for quote in quotes) for group in question.gold)


def citation_is_intact(citation) -> bool:
    try:
        return Path(citation.path).read_text(encoding="utf-8")[citation.start : citation.end] == citation.quote
    except OSError:
        return False


def evaluate(questions: list[Question], index_dir: str | None = None) -> EvalReport:
    """Ask every question and score the answers."""
    report = EvalReport()
    started = time.perf_counter()
    load_index(index_dir).encode_query("warm up")
    report.startup_ms = (time.perf_counter() - started) * 1000
    for question in tqdm(questions, desc="questions", unit="q", disable=None):
        started = time.perf_counter()
        reply = answer(question.question, index_dir=index_dir)
        report.latencies_ms.append((time.perf_counter() - started) * 1000)
        hit = is_hit(question, reply)
        if question.answerable:
            report.answerable += 1
            report.answerable_hits += hit
            report.false_abstentions += reply.abstained
        else:
            report.unanswerable += 1
            report.abstention_hits += hit
        if not hit:
            report.misses.append(question.id)
        if not reply.abstained:
            report.quoted_characters.append(sum(len(c.quote) for c in reply.citations))
        report.citations += len(reply.citations)
        report.intact_citations += sum(citation_is_intact(c) for c in reply.citations)
    return report
