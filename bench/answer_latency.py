"""Answer latency and build rate, each next to what the bare model costs on the same work.

Prints `answer()` p50/p95 beside the p50 of encoding the same questions alone, and the index build
rate (chunks/s, model already loaded; a first build also pays for importing the index libraries) beside
the model's raw encoding rate on the very same chunk texts.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np

import qa
from qa.embeddings import get_embedder
from qa.evaluate import load_questions
from qa.index import DATABASE_FILE, current_generation

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "eval" / "dev.jsonl"
ROUNDS = 5


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", default=str(ROOT / "seeds"), help="articles folder (default: seeds/)")
    parser.add_argument("--questions", default=str(DEV), help="JSON-lines question set (default: shared dev.jsonl)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="times each question is asked (default: %(default)s)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    embedder = get_embedder()
    embedder.encode_queries(["warm up"])
    with tempfile.TemporaryDirectory() as index_dir:
        started = time.perf_counter()
        qa.build_index(args.articles, Path(index_dir) / "first")
        first_build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = qa.build_index(args.articles, index_dir)
        build_seconds = time.perf_counter() - started
        with closing(sqlite3.connect(current_generation(index_dir) / DATABASE_FILE)) as db:
            chunk_texts = [text for (text,) in db.execute("SELECT text FROM chunks ORDER BY id")]
        started = time.perf_counter()
        embedder.model.encode(chunk_texts, batch_size=32, normalize_embeddings=True)
        raw_seconds = time.perf_counter() - started

        questions = [q.question for q in load_questions(args.questions)]
        qa.answer(questions[0], index_dir=index_dir)
        answer_ms, encode_ms = [], []
        for _ in range(args.rounds):
            for question in questions:
                started = time.perf_counter()
                embedder.encode_queries([question])
                encode_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                qa.answer(question, index_dir=index_dir)
                answer_ms.append((time.perf_counter() - started) * 1000)

    build_rate, raw_rate = report.chunks_embedded / build_seconds, len(chunk_texts) / raw_seconds
    print(f"articles: {args.articles} ({report.added} articles, {report.chunks_embedded} chunks)")
    print(f"{'measure':34s} {'qa':>10s} {'bare model':>12s} {'ratio':>7s}")
    print(f"{'answer() p50 vs query encoding p50':34s} {percentile(answer_ms, 50):8.1f}ms {percentile(encode_ms, 50):10.1f}ms "
          f"{percentile(answer_ms, 50) / percentile(encode_ms, 50):6.2f}x")
    print(f"{'answer() p95 vs query encoding p95':34s} {percentile(answer_ms, 95):8.1f}ms {percentile(encode_ms, 95):10.1f}ms "
          f"{percentile(answer_ms, 95) / percentile(encode_ms, 95):6.2f}x")
    print(f"{'build rate vs raw encoding rate':34s} {build_rate:6.1f}/s   {raw_rate:8.1f}/s   {build_rate / raw_rate:6.1%}")
    first_rate = report.chunks_embedded / first_build_seconds
    print(f"{'  first build in the process':34s} {first_rate:6.1f}/s   {raw_rate:8.1f}/s   {first_rate / raw_rate:6.1%}"
          "  (includes importing FAISS, bm25s, pysbd)")


if __name__ == "__main__":
    main()
