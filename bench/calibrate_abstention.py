"""Calibrate abstention: fit the single-question boundary (qa/abstention.json) and report the conversation rule.

Single questions: a linear boundary over the best sentence's evidence (qa.answers.ABSTENTION_EVIDENCE: its best
chunk's cosine with the question, the share of the question's keyword weight that chunk holds, the sentence's own
cosine; with a reranker, RERANKED_EVIDENCE adds its relevance logit), one boundary per reranker (--reranker), fitted by class-balanced logistic regression on questions the articles answer (SQuAD on its own articles,
dev answerables on the seeds) against questions they cannot answer: dev unanswerables on the seeds, SQuAD questions
asked of the seeds, dev questions asked of the SQuAD articles, and SQuAD questions asked of a large collection (the
30 CNN stories and the 2,225 BBC stories), whose off-topic questions nearly always find a chunk sharing their words.
Its bias is then set so that it abstains on FALSE_ABSTENTION_BUDGET of the answerable questions, refusing as many
of the others as that allows. Rates are reported cross-validated (5 folds, a question and its copies in one fold)
beside the fitted boundary's own.

Conversations: the 313 answerable CNN dev questions, each with its own history, on the 30 stories plus the 2,225
BBC stories as distractors, against 300 SQuAD questions and the 12 dev questions asked on that index after the
history of a random CNN conversation (nothing there answers them), judged as qa.answers judges a question asked in
a conversation: one that stands alone (not a follow-up, best sentence outside the conversation's current article)
is refused below the reranker's single-question boundary; then questions whose best sentence stands in the
conversation's own article are judged by the conversation rule (at least MIN_OWN_WORDS words of their own, dense,
and coverage of those words in that article); the others by the single-question boundary without a reranker's
relevance.

    .venv/bin/python bench/calibrate_abstention.py --news-index DIR   # DIR: an index of news/ and bbc/ (built if missing)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from qa import build_index
from qa.answers import (
    ABSTENTION_EVIDENCE, ABSTENTION_FILE, FOCUS_TRUSTED, MIN_OWN_WORDS, RERANKED_EVIDENCE, abstention_boundary, answer_evidence, below_boundary,
    read_question, stands_alone,
)
from qa.evaluate import Question, load_questions
from qa.followup import content_words
from qa.reranker import NO_RERANKER, get_reranker, reranker_name
from qa.retrieval import load_index

SHARED = Path(__file__).resolve().parents[2] / "shared"
CONVERSATION_NEGATIVES = 300
FALSE_ABSTENTION_BUDGET = 0.01
"""The share of answerable calibration questions the single-question boundary may abstain on."""
FOLDS = 5
SEED = 0
RERANKER = reranker_name()
"""The reranker whose boundary is fitted (--reranker)."""


def top_features(questions: list[Question], index_dir: str, histories: list | None = None) -> np.ndarray:
    """For each question's best sentence: its ABSTENTION_EVIDENCE, then the focus weight of its article, the coverage
    of the question's own words in that article, how many words of its own the question has, and whether it is
    judged as a single question (qa.answers.stands_alone)."""
    index = load_index(index_dir)
    rows = []
    for number, question in enumerate(questions):
        history = histories[number] if histories else question.history
        query = read_question(index, question.question, history)
        best = index.rank(query, reranker=get_reranker(RERANKER))[0]
        rows.append(
            (
                *answer_evidence(best, query),
                query.focus.articles.get(best.article, 0.0),
                index.article_coverage(" ".join(content_words(question.question)), best.article),
                len(content_words(question.question)),
                stands_alone(query, best),
            )
        )
    return np.array(rows)


def fit_boundary(evidence: np.ndarray, answerable: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights and bias (abstain below 0): the logistic regression's direction, shifted so that it abstains on
    FALSE_ABSTENTION_BUDGET of the answerable questions."""
    model = LogisticRegression(class_weight="balanced", max_iter=1000).fit(evidence, answerable)
    weights = model.coef_[0]
    return weights, -float(np.quantile(evidence[answerable] @ weights, FALSE_ABSTENTION_BUDGET))


def evidence_names() -> tuple[str, ...]:
    return ABSTENTION_EVIDENCE if RERANKER == NO_RERANKER else RERANKED_EVIDENCE


def abstains(features: np.ndarray, boundary: tuple[np.ndarray, float]) -> np.ndarray:
    """Whether the boundary abstains on each row of `features` (its first columns are the evidence)."""
    return below_boundary(features[:, : len(evidence_names())], boundary)


def single_questions(shared: Path, news_index: str) -> tuple[np.ndarray, float]:
    """Fit the single-question boundary, print its rates on each set, and return it."""
    dev = load_questions(shared / "eval/dev.jsonl")
    squad = load_questions(shared / "eval/squad/questions.jsonl")
    with tempfile.TemporaryDirectory() as seeds_index, tempfile.TemporaryDirectory() as squad_index:
        build_index(shared / "seeds", seeds_index)
        build_index(shared / "eval/squad/articles", squad_index)
        answerable_dev = [q for q in dev if q.answerable]
        sets = {  # name: (features, answerable, groups: a question keeps its group wherever it is asked)
            "SQuAD on its articles": (top_features(squad, squad_index), True, np.arange(len(squad))),
            "dev answerables on the seeds": (top_features(answerable_dev, seeds_index), True, -1 - np.arange(len(answerable_dev))),
            "dev unanswerables on the seeds": (top_features([q for q in dev if not q.answerable], seeds_index), False,
                                               -100 - np.arange(len(dev) - len(answerable_dev))),
            "SQuAD on the seeds": (top_features(squad, seeds_index), False, np.arange(len(squad))),
            "dev on the SQuAD articles": (top_features(dev, squad_index), False, -200 - np.arange(len(dev))),
            "SQuAD on CNN + BBC": (top_features(squad, news_index), False, np.arange(len(squad))),
        }
    evidence = np.vstack([features[:, : len(evidence_names())] for features, _, _ in sets.values()])
    answerable = np.concatenate([np.full(len(features), label) for features, label, _ in sets.values()])
    groups = np.concatenate([group for _, _, group in sets.values()])
    held_out = np.zeros(len(evidence), dtype=bool)
    for train, test in GroupKFold(n_splits=FOLDS).split(evidence, groups=groups):
        held_out[test] = abstains(evidence[test], fit_boundary(evidence[train], answerable[train]))
    boundary = fit_boundary(evidence, answerable)
    fitted = abstains(evidence, boundary)
    print(f"single questions: boundary {np.round(boundary[0], 3).tolist()}, bias {boundary[1]:.3f} "
          f"(abstain below 0; at most {FALSE_ABSTENTION_BUDGET:.0%} of answerable questions abstained on)")
    print(f"{'':34s} {'questions':>9s} {'abstained (held out)':>21s} {'abstained (fitted)':>19s}")
    start = 0
    for name, (features, label, _) in sets.items():
        rows = slice(start, start + len(features))
        start += len(features)
        kind = "false abstentions" if label else "refused"
        print(f"{name:34s} {len(features):9d} {held_out[rows].mean():21.1%} {fitted[rows].mean():19.1%}   ({kind})")
    return boundary


def conversations(shared: Path, index_dir: str) -> None:
    random.seed(SEED)
    news = load_questions(shared / "eval/news/questions.jsonl")
    histories = [q.history for q in news if len(q.history) >= 2]
    off_topic = random.sample(load_questions(shared / "eval/squad/questions.jsonl"), CONVERSATION_NEGATIVES)
    off_topic += load_questions(shared / "eval/dev.jsonl")
    positives = top_features([q for q in news if q.answerable], index_dir)
    negatives = top_features(off_topic, index_dir, [random.choice(histories) for _ in off_topic])
    focus, own_coverage, own_words, alone = (len(evidence_names()) + i for i in range(4))
    print(f"\nconversations: {len(positives)} answerable, {len(negatives)} off-topic; best sentence in the "
          f"conversation's article for {np.mean(positives[:, focus] >= FOCUS_TRUSTED):.0%} and "
          f"{np.mean(negatives[:, focus] >= FOCUS_TRUSTED):.0%}")
    print("in the conversation's article: dense<  own coverage<  false abstentions  abstentions on off-topic")
    for dense in (0.20, 0.25, 0.30, 0.35, 0.40, 0.45):
        for coverage in (0.1, 0.2, 0.3, 0.4):
            rates = []
            for features in (positives, negatives):
                in_focus = features[:, focus] >= FOCUS_TRUSTED
                focused = (features[:, own_words] >= MIN_OWN_WORDS) & (features[:, 0] < dense) & (features[:, own_coverage] < coverage)
                elsewhere = below_boundary(features[:, : len(ABSTENTION_EVIDENCE)], abstention_boundary())
                judged_alone = (features[:, alone] > 0) & abstains(features, abstention_boundary(RERANKER)) if RERANKER != NO_RERANKER else False
                rates.append(np.mean(judged_alone | np.where(in_focus, focused, elsewhere)))
            print(f"{'':30s}{dense:6.2f}  {coverage:13.2f}  {rates[0]:17.1%}  {rates[1]:24.1%}")


def main() -> None:
    global RERANKER
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(SHARED), help="the shared folder with seeds/, eval/ and corpora/")
    parser.add_argument("--news-index", help="index of news/ (the CNN stories) and bbc/ to reuse; built if missing")
    parser.add_argument("--report-only", action="store_true", help="report the rates and write no boundary")
    parser.add_argument("--reranker", default=RERANKER, help="fit the boundary used with this reranker (default: %(default)s)")
    args = parser.parse_args()
    RERANKER = reranker_name(args.reranker)
    shared = Path(args.shared)
    with tempfile.TemporaryDirectory() as work:
        index_dir = args.news_index
        if index_dir is None:
            shutil.copytree(shared / "eval/news/articles", Path(work) / "articles/news")
            shutil.copytree(shared / "corpora/bbc", Path(work) / "articles/bbc", ignore=shutil.ignore_patterns("*.md"))
            index_dir = str(Path(work) / "index")
            build_index(Path(work) / "articles", index_dir)
        boundary = single_questions(shared, index_dir)
        if not args.report_only:
            stored = json.loads(ABSTENTION_FILE.read_text(encoding="utf-8"))
            stored[RERANKER] = {"evidence": list(evidence_names()), "weights": [round(float(w), 4) for w in boundary[0]],
                                "bias": round(boundary[1], 4)}
            ABSTENTION_FILE.write_text(json.dumps(stored, indent=2) + "\n", encoding="utf-8")
            print(f"wrote the {RERANKER} boundary in {ABSTENTION_FILE.name}")
        conversations(shared, index_dir)


if __name__ == "__main__":
    main()
