"""Train the sentence ranker (qa/ranker.json): a linear softmax ranker over qa's sentence features, conversation included.

Training data, all from ../shared: the seeds with dev.jsonl, the 30 CNN stories with their conversations
(news/questions.jsonl, each question with its own history), the 4 SQuAD articles with their questions, and the
2,225 BBC stories as distractors, all in one index. So that a question that changes subject is learned too, 400
SQuAD questions are asked once more with the history of a random news conversation. A candidate sentence is
positive when it holds a gold answer (and, for a news question, stands in the question's own story).

Cross-validation splits by article (5 folds; every question about an article in the same fold) and reports hit@3
of the top three distinct sentences per held-out question, by data set, against the hand-set weights.

    .venv/bin/python bench/train_ranker.py                      # build the corpus index in ~/.cache/qa-bench, train
    .venv/bin/python bench/train_ranker.py --index DIR          # reuse (and update) an index of that corpus
    .venv/bin/python bench/train_ranker.py --cv-only            # report cross-validation, write nothing
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import GroupKFold

from qa import build_index
from qa.answers import read_question
from qa.evaluate import Question, load_questions
from qa.followup import normalize
from qa.retrieval import FEATURES, RANKER_FILE, load_index

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CACHE = Path.home() / ".cache" / "qa-bench"
RESULTS = ROOT / "bench" / "results" / "ranker.json"
SUBJECT_CHANGES = 400
FOLDS = 5
SEED = 0
REGULARISATION = 1e-3
HAND_SET = np.array([1.0, 1.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.6, 0.0, 0.0, -0.2, 0.0, 2.0, 1.0, 0.0, 0.5, 0.5], dtype=np.float32)
"""The weights before training: the old fixed sum of standardised scores plus a guessed focus bonus."""


@dataclass
class Example:
    """One question's candidates: features, labels, the article it is about (for splitting) and its data set."""

    features: np.ndarray
    labels: np.ndarray
    group: str
    dataset: str


def corpus(work: Path) -> Path:
    """A folder holding seeds/, news/, squad/ and bbc/ (copies: the build skips links out of the folder)."""
    articles = work / "articles"
    for name, source in (
        ("seeds", SHARED / "seeds"),
        ("news", SHARED / "eval/news/articles"),
        ("squad", SHARED / "eval/squad/articles"),
        ("bbc", SHARED / "corpora/bbc"),
    ):
        if not (articles / name).exists():
            shutil.copytree(source, articles / name, ignore=shutil.ignore_patterns("*.md"))
    return articles


def examples(index_dir: str, dataset: str, questions: list[Question], folder: str, groups: list[str]) -> list[Example]:
    index = load_index(index_dir)
    found = []
    for question, group in zip(questions, groups):
        candidates = index.candidates(read_question(index, question.question, question.history))
        alternatives = [normalize(a) for group_ in question.gold for a in group_]
        sentences = candidates.sentences
        labels = np.zeros(len(sentences), dtype=np.int8)
        for i, (article, text) in enumerate(zip(sentences.article, sentences.text)):
            path = index.reader.article(int(article)).path
            if not path.startswith(folder + "/") or (question.story and Path(path).name != question.story):
                continue
            labels[i] = any(alternative in normalize(text) for alternative in alternatives)
        found.append(Example(candidates.features, labels, group, dataset))
    return found


def gather(index_dir: str) -> list[Example]:
    random.seed(SEED)
    dev = [q for q in load_questions(SHARED / "eval/dev.jsonl") if q.answerable]
    news = [q for q in load_questions(SHARED / "eval/news/questions.jsonl") if q.answerable]
    squad_rows = [json.loads(line) for line in (SHARED / "eval/squad/questions.jsonl").read_text().splitlines() if line]
    squad = load_questions(SHARED / "eval/squad/questions.jsonl")
    squad_titles = [row["title"] for row in squad_rows]
    histories = [(q.history, q.story) for q in news if q.history]
    changed, changed_groups = [], []
    for i in random.sample(range(len(squad)), SUBJECT_CHANGES):
        history, story = random.choice(histories)
        changed.append(Question(squad[i].id, squad[i].question, squad[i].gold, True, history))
        changed_groups.append(f"squad:{squad_titles[i]}")
    return (
        examples(index_dir, "dev", dev, "seeds", ["seeds"] * len(dev))
        + examples(index_dir, "news", news, "news", [f"news:{q.story}" for q in news])
        + examples(index_dir, "squad", squad, "squad", [f"squad:{t}" for t in squad_titles])
        + examples(index_dir, "subject change", changed, "squad", changed_groups)
    )


def hit_at_3(example: Example, weights: np.ndarray) -> bool:
    scores = example.features @ weights
    return bool(example.labels[np.argsort(-scores)[:3]].any())


def fit(train: list[Example]) -> np.ndarray:
    """Weights maximising, over questions, the softmax probability of the candidates that hold a gold answer
    (a conditional logit, "listwise" ranking), each data set weighing the same in all, with an L2 penalty."""
    train = [e for e in train if e.labels.any()]
    sizes = {d: sum(e.dataset == d for e in train) for d in {e.dataset for e in train}}
    question_weight = np.array([1.0 / sizes[e.dataset] for e in train]) / len(sizes)
    features = np.vstack([e.features for e in train]).astype(np.float64)
    labels = np.concatenate([e.labels for e in train]).astype(bool)
    owner = np.repeat(np.arange(len(train)), [len(e.labels) for e in train])

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        scores = features @ weights
        top = np.full(len(train), -np.inf)
        np.maximum.at(top, owner, scores)
        exp = np.exp(scores - top[owner])
        total = np.bincount(owner, exp, len(train))
        gold = np.bincount(owner, exp * labels, len(train))
        probability_all, probability_gold = exp / total[owner], exp * labels / gold[owner]
        value = -(question_weight * (np.log(gold) - np.log(total))).sum() + REGULARISATION * weights @ weights
        gradient = -((probability_gold - probability_all) * question_weight[owner]) @ features + 2 * REGULARISATION * weights
        return float(value), gradient

    result = minimize(loss, np.zeros(features.shape[1]), jac=True, method="L-BFGS-B")
    return result.x.astype(np.float32)


def cross_validate(data: list[Example]) -> dict[str, tuple[float, float]]:
    """Held-out hit@3 per data set, learned and hand-set, with folds split by article."""
    learned = np.zeros(len(data), dtype=bool)
    for train_index, test_index in GroupKFold(n_splits=FOLDS).split(data, groups=[e.group for e in data]):
        weights = fit([data[i] for i in train_index])
        for i in test_index:
            learned[i] = hit_at_3(data[i], weights)
    hand = np.array([hit_at_3(e, HAND_SET) for e in data])
    result = {}
    for dataset in dict.fromkeys(e.dataset for e in data):
        mask = np.array([e.dataset == dataset for e in data])
        result[dataset] = (float(learned[mask].mean()), float(hand[mask].mean()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="index of the training corpus to reuse and update (default: built in the cache)")
    parser.add_argument("--work", default=str(CACHE), help="folder for the corpus copy and index (default: %(default)s)")
    parser.add_argument("--cv-only", action="store_true", help="report cross-validation and write no weights")
    args = parser.parse_args()
    work = Path(args.work)
    index_dir = args.index or str(work / "index")
    build_index(corpus(work), index_dir)
    data = gather(index_dir)
    reachable = np.mean([e.labels.any() for e in data])
    print(f"{len(data)} questions, {sum(len(e.labels) for e in data):,} candidate sentences; "
          f"a gold sentence among the candidates for {reachable:.1%}")
    print(f"{'held-out hit@3 (top 3 sentences)':34s} {'learned':>8s} {'hand-set':>9s}")
    held_out = cross_validate(data)
    for dataset, (learned, hand) in held_out.items():
        print(f"{dataset:34s} {learned:8.1%} {hand:9.1%}")
    if args.cv_only:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({d: {"learned_hit_at_3": l, "hand_set_hit_at_3": h} for d, (l, h) in held_out.items()}, indent=2) + "\n",
        encoding="utf-8",
    )
    weights = fit(data)
    RANKER_FILE.write_text(
        json.dumps({"features": list(FEATURES), "weights": [round(float(w), 4) for w in weights]}, indent=2) + "\n",
        encoding="utf-8",
    )
    print(f"wrote {RANKER_FILE.relative_to(ROOT)}: " + ", ".join(f"{n} {w:+.2f}" for n, w in zip(FEATURES, weights)))


if __name__ == "__main__":
    main()
