"""Calibrate the abstention thresholds, for single questions and for questions inside a conversation.

Single questions: how often each (dense, keyword-coverage) rule abstains on questions the articles answer (SQuAD on
its own articles, dev answerables on the seeds) and on questions they cannot answer (dev unanswerables; SQuAD
questions asked of the seeds; dev questions asked of the SQuAD articles).

Conversations: the 313 answerable CNN dev questions, each with its own history, on the 30 stories plus the 2,225
BBC stories as distractors, against 300 SQuAD questions and the 12 dev questions asked on that index after the
history of a random CNN conversation (nothing there answers them). Questions whose best sentence stands in the
conversation's own article are judged by the conversation rule (at least MIN_OWN_WORDS words of their own, dense,
and coverage of those words in that article); the others by the single-question rule.

    .venv/bin/python bench/calibrate_abstention.py --news-index DIR   # DIR: an index of news/ and bbc/ (built if missing)
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

from qa import build_index
from qa.answers import ABSTAIN_COVERAGE, ABSTAIN_DENSE, FOCUS_TRUSTED, MIN_OWN_WORDS, read_question
from qa.evaluate import Question, load_questions
from qa.followup import content_words
from qa.retrieval import load_index

SHARED = Path(__file__).resolve().parents[2] / "shared"
CONVERSATION_NEGATIVES = 300
SEED = 0


def top_features(questions: list[Question], index_dir: str, histories: list | None = None) -> np.ndarray:
    """(n, 5) for each question's best sentence: chunk cosine, keyword coverage, focus weight of its article, the
    coverage of the question's own words in that article, and how many words of its own the question has."""
    index = load_index(index_dir)
    rows = []
    for number, question in enumerate(questions):
        history = histories[number] if histories else question.history
        query = read_question(index, question.question, history)
        best = index.rank(query)[0]
        rows.append(
            (
                best.chunk_dense,
                best.keyword_coverage,
                query.focus.articles.get(best.article, 0.0),
                index.article_coverage(" ".join(content_words(question.question)), best.article),
                len(content_words(question.question)),
            )
        )
    return np.array(rows)


def single_questions(shared: Path) -> None:
    dev = load_questions(shared / "eval/dev.jsonl")
    squad = load_questions(shared / "eval/squad/questions.jsonl")
    with tempfile.TemporaryDirectory() as seeds_index, tempfile.TemporaryDirectory() as squad_index:
        build_index(shared / "seeds", seeds_index)
        build_index(shared / "eval/squad/articles", squad_index)
        positives = np.vstack([top_features(squad, squad_index), top_features([q for q in dev if q.answerable], seeds_index)])
        negatives = np.vstack(
            [
                top_features([q for q in dev if not q.answerable], seeds_index),
                top_features(squad, seeds_index),
                top_features(dev, squad_index),
            ]
        )
    print(f"single questions: {len(positives)} answerable, {len(negatives)} unanswerable question/index pairs")
    print("dense<  coverage<  false abstentions  abstentions on unanswerable")
    for dense in (0.20, 0.25, 0.30, 0.35, 0.40):
        for coverage in (0.3, 0.4, 0.5, 0.6, 0.7, 1.01):
            abstain_pos = np.mean((positives[:, 0] < dense) & (positives[:, 1] < coverage))
            abstain_neg = np.mean((negatives[:, 0] < dense) & (negatives[:, 1] < coverage))
            print(f"{dense:6.2f}  {coverage:9.2f}  {abstain_pos:17.1%}  {abstain_neg:27.1%}")


def conversations(shared: Path, index_dir: str) -> None:
    random.seed(SEED)
    news = load_questions(shared / "eval/news/questions.jsonl")
    histories = [q.history for q in news if len(q.history) >= 2]
    off_topic = random.sample(load_questions(shared / "eval/squad/questions.jsonl"), CONVERSATION_NEGATIVES)
    off_topic += load_questions(shared / "eval/dev.jsonl")
    positives = top_features([q for q in news if q.answerable], index_dir)
    negatives = top_features(off_topic, index_dir, [random.choice(histories) for _ in off_topic])
    print(f"\nconversations: {len(positives)} answerable, {len(negatives)} off-topic; best sentence in the "
          f"conversation's article for {np.mean(positives[:, 2] >= FOCUS_TRUSTED):.0%} and "
          f"{np.mean(negatives[:, 2] >= FOCUS_TRUSTED):.0%}")
    print("in the conversation's article: dense<  own coverage<  false abstentions  abstentions on off-topic")
    for dense in (0.20, 0.25, 0.30, 0.35, 0.40, 0.45):
        for coverage in (0.1, 0.2, 0.3, 0.4):
            rates = []
            for features in (positives, negatives):
                in_focus = features[:, 2] >= FOCUS_TRUSTED
                focused = (features[:, 4] >= MIN_OWN_WORDS) & (features[:, 0] < dense) & (features[:, 3] < coverage)
                single = (features[:, 0] < ABSTAIN_DENSE) & (features[:, 1] < ABSTAIN_COVERAGE)
                rates.append(np.mean(np.where(in_focus, focused, single)))
            print(f"{'':30s}{dense:6.2f}  {coverage:13.2f}  {rates[0]:17.1%}  {rates[1]:24.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(SHARED), help="the shared folder with seeds/, eval/ and corpora/")
    parser.add_argument("--news-index", help="index of news/ (the CNN stories) and bbc/ to reuse; built if missing")
    args = parser.parse_args()
    shared = Path(args.shared)
    single_questions(shared)
    with tempfile.TemporaryDirectory() as work:
        index_dir = args.news_index
        if index_dir is None:
            shutil.copytree(shared / "eval/news/articles", Path(work) / "articles/news")
            shutil.copytree(shared / "corpora/bbc", Path(work) / "articles/bbc", ignore=shutil.ignore_patterns("*.md"))
            index_dir = str(Path(work) / "index")
            build_index(Path(work) / "articles", index_dir)
        conversations(shared, index_dir)


if __name__ == "__main__":
    main()
