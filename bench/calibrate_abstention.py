"""Calibrate the abstention thresholds: how often each (dense, keyword-coverage) rule abstains on questions the
articles answer (SQuAD on its own articles, dev answerables on the seeds) and on questions they cannot answer
(dev unanswerables; SQuAD questions asked of the seeds; dev questions asked of the SQuAD articles)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from qa import build_index
from qa.embeddings import get_embedder
from qa.evaluate import load_questions
from qa.retrieval import load_index

SHARED = Path(__file__).resolve().parents[2] / "shared"


def top_features(questions, index_dir: str) -> np.ndarray:
    """(n, 2): chunk cosine and keyword coverage of each question's best sentence."""
    index = load_index(index_dir)
    vectors = get_embedder(index.manifest["model"], index.manifest["backend"]).encode_queries([q.question for q in questions])
    rows = []
    for question, vector in zip(questions, vectors):
        best = index.rank(question.question, vector)[0]
        rows.append((best.chunk_dense, best.keyword_coverage))
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", default=str(SHARED), help="the shared folder with seeds/ and eval/")
    args = parser.parse_args()
    shared = Path(args.shared)
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
    print(f"{len(positives)} answerable, {len(negatives)} unanswerable question/index pairs")
    print("dense<  coverage<  false abstentions  abstentions on unanswerable")
    for dense in (0.20, 0.25, 0.30, 0.35, 0.40):
        for coverage in (0.3, 0.4, 0.5, 0.6, 0.7, 1.01):
            abstain_pos = np.mean((positives[:, 0] < dense) & (positives[:, 1] < coverage))
            abstain_neg = np.mean((negatives[:, 0] < dense) & (negatives[:, 1] < coverage))
            print(f"{dense:6.2f}  {coverage:9.2f}  {abstain_pos:17.1%}  {abstain_neg:27.1%}")


if __name__ == "__main__":
    main()
