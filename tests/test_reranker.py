"""The trained models, as a user meets them: the reranker shipped with qa, used by default, answering questions
worded unlike their answer, still abstaining off topic, switched off with "none" to give the linear ranker's answers;
and the span reader's short answers: a few exact words inside a verified quote, first in `qa ask`, never on an
abstention, given after either ranking, and none with `--reader none --reranker none`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qa
from qa.answers import read_question
from qa.articles import article_text
from qa.evaluate import citation_is_intact, is_hit, load_questions, short_is_intact
from qa.reader import DEFAULT_READER, reader_name
from qa.reranker import DEFAULT_RERANKER, MODELS_DIR, get_reranker, reranker_name
from qa.retrieval import load_index

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SQUAD = SHARED / "eval" / "squad"
DEV = SHARED / "eval" / "dev.jsonl"
PARAPHRASED = "Since Denver chose white, what colors did Carolina wear in Super Bowl 50?"
"""A SQuAD dev question worded unlike its answer ("The Broncos' decision to wear white meant the Panthers would wear
their standard home uniform: black jerseys with silver pants."); the linear ranker alone does not quote it."""


@pytest.fixture(scope="module")
def squad_index(tmp_path_factory) -> str:
    index_dir = tmp_path_factory.mktemp("squad-index")
    qa.build_index(SQUAD / "articles", index_dir)
    return str(index_dir)


@pytest.fixture(scope="module")
def seeds_index(tmp_path_factory) -> str:
    index_dir = tmp_path_factory.mktemp("seeds-index")
    qa.build_index(ROOT / "seeds", index_dir)
    return str(index_dir)


def test_the_models_ship_with_the_package_and_are_used(squad_index):
    assert reranker_name() == DEFAULT_RERANKER and reader_name() == DEFAULT_READER
    for name in (DEFAULT_RERANKER, DEFAULT_READER):
        assert sum(f.stat().st_size for f in (MODELS_DIR / name).iterdir()) < 25_000_000
    reranker = get_reranker()
    index = load_index(squad_index)
    ranked = index.rank(read_question(index, "When did Kenya become independent?", None), reranker=reranker)
    assert 0 < len(ranked) <= reranker.settings.depth
    assert all(np.isfinite(s.relevance) for s in ranked)
    assert [s.score for s in ranked] == sorted((s.score for s in ranked), reverse=True)
    reply = qa.answer("When did Kenya become independent?", index_dir=squad_index)
    assert not reply.abstained and "1963" in reply.citations[0].quote


def test_with_none_the_ranking_is_the_linear_rankers(squad_index):
    index = load_index(squad_index)
    question = "Who was the head coach of the Denver Broncos?"
    linear = index.rank(read_question(index, question, None))
    reply = qa.answer(question, index_dir=squad_index, reranker="none")
    assert all(np.isnan(s.relevance) for s in linear)
    assert reply.citations[0].score == round(linear[0].score, 4)
    assert reply.citations[0].start == linear[0].start or reply.citations[0].start < linear[0].start < reply.citations[0].end


def test_a_question_worded_unlike_its_answer_is_answered(squad_index):
    question = next(q for q in load_questions(SQUAD / "questions.jsonl") if q.question == PARAPHRASED)
    reply = qa.answer(question.question, index_dir=squad_index)
    assert is_hit(question, reply)
    assert all(citation_is_intact(c) for c in reply.citations)


def test_off_topic_questions_still_abstain_and_every_quote_is_intact(seeds_index):
    for question in load_questions(DEV):
        reply = qa.answer(question.question, index_dir=seeds_index)
        assert is_hit(question, reply), question.question
        assert all(citation_is_intact(c) for c in reply.citations)
        if not question.answerable:
            assert reply.abstained and not reply.citations


@pytest.mark.parametrize("option, unknown", [("--reranker", "unknown reranker 'bert-xl'"), ("--reader", "unknown reader 'bert-xl'")])
def test_an_unknown_model_is_a_one_line_error(seeds_index, option, unknown):
    done = subprocess.run(
        [sys.executable, "-m", "qa.cli", "ask", "Where did they meet?", "--index", seeds_index, option, "bert-xl"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and unknown in done.stderr
    assert "none" in done.stderr


def test_a_short_answer_is_a_few_exact_words_inside_a_verified_quote(squad_index):
    reply = qa.answer("When did Kenya become independent?", index_dir=squad_index)
    short = reply.short
    assert short is not None and "1963" in short.text and len(short.text.split()) <= 4
    assert article_text(short.path)[short.start : short.end] == short.text
    holder = reply.citations[reply.short_citation - 1]
    assert holder.start <= short.start < short.end <= holder.end and short_is_intact(reply)
    assert 0 < short.confidence <= 1
    linear = qa.answer("When did Kenya become independent?", index_dir=squad_index, reranker="none").short
    assert linear is not None and "1963" in linear.text, "the reader reads the linear ranker's quotes too"
    assert qa.answer("When did Kenya become independent?", index_dir=squad_index, reranker="none", reader="none").short is None


def test_no_short_answer_on_an_abstention_or_a_question_few_words_cannot_answer(seeds_index):
    for question in load_questions(DEV):
        reply = qa.answer(question.question, index_dir=seeds_index)
        if reply.abstained:
            assert reply.short is None
        else:
            assert reply.short is None or short_is_intact(reply)
    for question in ("Why did the three leaders meet in Lima?", "Did the leaders of Japan, the United States and South Korea meet in Lima?"):
        reply = qa.answer(question, index_dir=seeds_index)
        assert not reply.abstained and reply.short is None


def test_qa_ask_prints_the_short_answer_first(seeds_index):
    done = subprocess.run(
        [sys.executable, "-m", "qa.cli", "ask", "Where did the leaders of Japan, the United States and South Korea meet in November 2024?",
         "--index", seeds_index], capture_output=True, text=True, check=True,
    )
    first, _, rest = done.stdout.partition("\n")
    assert first.startswith("Lima") and first.endswith("[1]")
    assert rest.startswith("\n“") and "Lima" in rest
