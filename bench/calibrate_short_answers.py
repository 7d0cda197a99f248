"""Calibrate short answers: the confidence below which the reader gives no short answer (its settings.json); with
`--reader none`, the reranker's span head's.

Every question of the SQuAD development set (4 articles, on their own index) and of the CNN conversations (each with
its own history, on the 30 stories plus the 2,225 BBC stories) is answered with no threshold. Each short answer
given is scored against the gold answers with token F1 (SQuAD's normalisation); one given to a question the articles
cannot answer scores 0. A logistic regression of "right" (F1 at least RIGHT_F1) on the log of the confidence sets the
threshold where a short answer becomes more likely right than wrong, so that what is shown in bold is a fair bet.

    .venv/bin/python bench/calibrate_short_answers.py --news-index DIR --squad-index DIR   # built if missing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from qa import build_index
from qa.answers import answer
from qa.evaluate import Question, exact_match, load_questions, token_f1
from qa.reader import get_reader, reader_name
from qa.reranker import MODELS_DIR, SETTINGS_FILE, get_reranker, reranker_name

SHARED = Path(__file__).resolve().parents[2] / "shared"
CACHE = Path.home() / ".cache" / "qa-bench"
RIGHT_F1 = 0.5
"""A short answer sharing at least half its words with a gold answer (F1) counts as right."""
SETTING = "short_answer_confidence"

logger = logging.getLogger("calibrate_short_answers")


@dataclasses.dataclass
class Scored:
    """One question's short answer (if any) with no threshold."""

    answerable: bool
    confidence: float
    exact: float
    f1: float


def score_set(questions: list[Question], index_dir: str, models: dict[str, str], label: str) -> list[Scored]:
    scored = []
    for question in tqdm(questions, desc=label, unit="q"):
        reply = answer(question.question, index_dir=index_dir, history=question.history, **models)
        if reply.short is None:
            scored.append(Scored(question.answerable, 0.0, 0.0, 0.0))
            continue
        golds = [alternative for group in question.gold for alternative in group]
        right = question.answerable
        scored.append(Scored(question.answerable, reply.short.confidence,
                             exact_match(reply.short.text, golds) if right else 0.0, token_f1(reply.short.text, golds) if right else 0.0))
    return scored


def report(scored: list[Scored], threshold: float) -> dict:
    """Over the answerable questions: the share with a short answer at the threshold, and its exact match and F1."""
    answerable = [s for s in scored if s.answerable]
    given = [s for s in answerable if s.confidence >= threshold and s.confidence > 0]
    return {
        "answerable": len(answerable),
        "with_short_answer": len(given) / len(answerable),
        "exact_match": sum(s.exact for s in given) / len(answerable),
        "f1": sum(s.f1 for s in given) / len(answerable),
        "precision_f1": float(np.mean([s.f1 for s in given])) if given else 0.0,
        "on_unanswerable": sum(1 for s in scored if not s.answerable and s.confidence >= threshold and s.confidence > 0),
    }


def fitted_threshold(scored: list[Scored]) -> float:
    """The confidence at which a short answer is as likely right (F1 >= RIGHT_F1) as wrong."""
    given = [s for s in scored if s.confidence > 0]
    x = np.log(np.array([s.confidence for s in given]))[:, None]
    y = np.array([s.f1 >= RIGHT_F1 for s in given])
    model = LogisticRegression().fit(x, y)
    return float(np.exp(-model.intercept_[0] / model.coef_[0, 0]))


def index_of(folders: dict[str, Path], index_dir: Path) -> str:
    """The index at `index_dir`, built first when missing from the `folders` (sub-folder name -> source)."""
    if not index_dir.exists():
        for name, source in folders.items():
            shutil.copytree(source, index_dir.parent / "articles" / name, ignore=shutil.ignore_patterns("*.md"))
        build_index(str(index_dir.parent / "articles"), str(index_dir))
    return str(index_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared folder with eval/ and corpora/")
    parser.add_argument("--news-index", type=Path, default=CACHE / "newsbbc" / "index", help="index of news/ and bbc/")
    parser.add_argument("--squad-index", type=Path, default=CACHE / "squad" / "index", help="index of the SQuAD dev articles")
    parser.add_argument("--reranker", default=reranker_name(), help="the reranker in use (default: %(default)s)")
    parser.add_argument("--reader", default=reader_name(), help="the reader to calibrate, or none for the reranker's "
                        "span head (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="report at the stored threshold and write nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = get_reader(args.reader) or get_reranker(args.reranker)
    if model is None:
        raise SystemExit("--reader none --reranker none gives no short answers: name a trained reader")
    stored = model.settings.short_answer_confidence
    model.settings = dataclasses.replace(model.settings, short_answer_confidence=0.0)
    models = {"reranker": args.reranker, "reader": args.reader}
    squad = score_set(load_questions(args.shared / "eval" / "squad" / "questions.jsonl"),
                      index_of({"squad": args.shared / "eval" / "squad" / "articles"}, args.squad_index), models, "squad")
    news = score_set(load_questions(args.shared / "eval" / "news" / "questions.jsonl"),
                     index_of({"news": args.shared / "eval" / "news" / "articles", "bbc": args.shared / "corpora" / "bbc"},
                              args.news_index),
                     models, "news")
    threshold = stored if args.report_only else round(fitted_threshold(squad + news), 3)
    figures = {"threshold": threshold, "squad": report(squad, threshold), "news": report(news, threshold),
               "squad_without_threshold": report(squad, 0.0), "news_without_threshold": report(news, 0.0)}
    print(json.dumps(figures, indent=1))
    if not args.report_only:
        path = MODELS_DIR / model.name / SETTINGS_FILE
        settings = json.loads(path.read_text(encoding="utf-8"))
        settings[SETTING] = threshold
        settings["short_answer_calibration"] = figures
        path.write_text(json.dumps(settings, indent=1), encoding="utf-8")
        logger.info("wrote %s = %.3f to %s", SETTING, threshold, path)


if __name__ == "__main__":
    main()
