"""Conversations over real news: follow-ups from the CNN dev conversations stay on their story, a change of subject
leaves it, off-topic questions are still refused, and `qa eval` scores conversations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qa import answer, build_index
from qa.evaluate import evaluate, load_questions

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
NEWS = SHARED / "eval" / "news"
DISTRACTORS = sorted((SHARED / "corpora" / "bbc" / "business").glob("*.txt"))[:100]
ARUBA_STORY = "3h8dhmccw9bthwa0epswnh4as77kdu.txt"
LIMA_QUESTION = "Where did the leaders of Japan, the United States and South Korea meet in November 2024?"

pytestmark = pytest.mark.skipif(not NEWS.is_dir(), reason="../shared/eval/news is not beside the repository")


@pytest.fixture(scope="module")
def news_index(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The seeds, the 30 CNN dev stories and 100 BBC business stories as distractors."""
    articles = tmp_path_factory.mktemp("conversation-articles")
    shutil.copytree(ROOT / "seeds", articles / "seeds")
    shutil.copytree(NEWS / "articles", articles / "news")
    (articles / "bbc").mkdir()
    for path in DISTRACTORS:
        shutil.copy(path, articles / "bbc" / path.name)
    index_dir = tmp_path_factory.mktemp("conversation-index")
    build_index(str(articles), str(index_dir))
    return str(index_dir)


def _story(citation) -> str:
    return Path(citation.path).name


@pytest.mark.parametrize("own_answers", [False, True], ids=["reader-answers", "qa-answers"])
def test_short_follow_ups_are_answered_from_the_conversations_story(news_index: str, own_answers: bool) -> None:
    turns = ["Whose house was searched?", "In what city?", "County?", "State?", "Where is he now?"]
    reader_answers = ["Gary Giordano", "Gaithersburg", "Montgomery County", "Maryland", "Aruban jail"]
    history: list = []
    quoted = []
    for question, expected in zip(turns, reader_answers):
        reply = answer(question, index_dir=news_index, history=history)
        if history:
            assert not reply.abstained, question
            assert _story(reply.citations[0]) == ARUBA_STORY, (question, reply.text)
            quoted.append(any(expected.lower() in c.quote.lower() for c in reply.citations))
        history.append((question, reply if own_answers else expected))
    assert sum(quoted) >= len(quoted) - 1, quoted  # the ranker is right about 4 times in 5 on such follow-ups


def test_news_dev_conversations_stay_on_their_story_with_intact_quotes(news_index: str) -> None:
    """All 319 questions of the CNN dev conversations, each with its own earlier turns, as a reader would ask them."""
    report = evaluate(load_questions(NEWS / "questions.jsonl"), news_index)
    follow_ups = report.follow_ups
    assert follow_ups.right_article / follow_ups.with_story >= 0.9
    assert report.overall.answerable_hits / report.overall.answerable >= 0.7
    assert report.overall.false_abstentions / report.overall.answerable <= 0.05
    assert report.intact_citations == report.citations > 0


def test_a_question_on_another_subject_leaves_the_old_article(news_index: str) -> None:
    history = [("Whose house was searched?", "Gary Giordano"), ("In what city?", "Gaithersburg")]
    reply = answer(LIMA_QUESTION, index_dir=news_index, history=history)
    assert not reply.abstained
    assert "Lima" in reply.citations[0].quote
    assert Path(reply.citations[0].path).parent.name == "seeds"


@pytest.mark.parametrize("question", ["What is the boiling point of mercury?", "Who painted the Mona Lisa?"])
def test_off_topic_questions_in_a_conversation_are_still_refused(news_index: str, question: str) -> None:
    history = [("Whose house was searched?", "Gary Giordano"), ("In what city?", "Gaithersburg")]
    reply = answer(question, index_dir=news_index, history=history)
    assert reply.abstained and not reply.citations


def test_qa_eval_reports_follow_ups_and_right_article_with_its_own_history(news_index: str, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (NEWS / "questions.jsonl").read_text(encoding="utf-8").splitlines()[:6]]
    questions = tmp_path / "conversation.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "qa.cli", "eval", str(questions), "--index", news_index, "--self-history"],
        capture_output=True, text=True, check=True,
    )
    assert "right article" in result.stdout
    assert "first turns: answerable hits      " in result.stdout
    assert "follow-ups:  answerable hits      " in result.stdout
    assert "citation integrity" in result.stdout and "(100.0%)" in result.stdout
