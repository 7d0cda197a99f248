"""Answer latency and build rate, each next to what the bare model costs on the same work; SQuAD quality.

Prints `answer()` p50/p95 beside the p50 of encoding the same questions alone, and the index build
rate (chunks/s, model already loaded; a first build also pays for importing the index libraries) beside
the bare model's rate on the very same work: the chunk texts, and each sentence on its own.

    .venv/bin/python bench/answer_latency.py                                    # seeds + dev.jsonl (as before)
    .venv/bin/python bench/answer_latency.py --articles ../shared/corpora/bbc   # BBC: one build, questions on its stories
    .venv/bin/python bench/answer_latency.py --articles ../shared/corpora/bbc --index /tmp/bbc-index  # reuse an index
    .venv/bin/python bench/answer_latency.py --squad                            # also SQuAD: hit@3, quoted chars, latency
    .venv/bin/python bench/answer_latency.py --squad-only                       # SQuAD alone

On a corpus other than seeds/ the questions (unless --questions is given) name the titles of 40 of its
articles ("What happened in the story “<title>”?"), so they are answered rather than abstained.
The SQuAD section builds an index of ../shared/eval/squad/articles (or reuses --squad-index) and scores
questions.jsonl with qa.evaluate: hit@3 = answerable questions with every gold answer in the first three quotes.
Set QA_BACKEND=onnx to measure the ONNX Runtime backend. Every question of the latency section is also asked with
`reranker="none", reader="none"` (the linear ranker alone, no short answer) in turn with the default, so the two are
compared in one run (QA_RERANKER and QA_READER pick the models). Writes bench/results/answer_latency.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np

import qa
from qa.embeddings import get_embedder
from qa.evaluate import Question, evaluate, load_questions
from qa.reader import NO_READER, reader_name
from qa.reranker import NO_RERANKER, reranker_name
from qa.store.embedded import DATABASE_FILE, current_generation

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "eval" / "dev.jsonl"
SQUAD = ROOT.parent / "shared" / "eval" / "squad"
RESULTS = ROOT / "bench" / "results"
ROUNDS = 5
TITLE_QUESTIONS = 40
LINEAR = {"reranker": NO_RERANKER, "reader": NO_READER}
"""answer() as it was before the trained models: the linear ranker alone, and no short answer."""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def title_questions(store: str, count: int = TITLE_QUESTIONS) -> list[str]:
    """Questions naming the titles of `count` of the store's articles, spread over them (a folder or a Milvus store)."""
    titles = [article.title for article in qa.describe_index(store=store).articles]
    return [f"What happened in the story “{title}”?" for title in titles[:: max(1, len(titles) // count)][:count]]


def latency(questions: list[str], store: str, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """`answer()` times with the trained models, without them (LINEAR), and bare query-encoding times of each
    question, asked `rounds` times, the three in turn (store: a folder or a Milvus location)."""
    embedder = get_embedder()
    qa.answer(questions[0], store=store)
    qa.answer(questions[0], store=store, **LINEAR)
    answer_ms, linear_ms, encode_ms = [], [], []
    for _ in range(rounds):
        for question in questions:
            started = time.perf_counter()
            embedder.encode_texts([question])
            encode_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            qa.answer(question, store=store)
            answer_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            qa.answer(question, store=store, **LINEAR)
            linear_ms.append((time.perf_counter() - started) * 1000)
    return answer_ms, linear_ms, encode_ms


def print_latency(answer_ms: list[float], encode_ms: list[float], linear_ms: list[float] | None = None) -> None:
    print(f"{'measure':34s} {'qa':>10s} {'bare model':>12s} {'ratio':>7s}")
    for q in (50, 95):
        print(f"{f'answer() p{q} vs query encoding p{q}':34s} {percentile(answer_ms, q):8.1f}ms "
              f"{percentile(encode_ms, q):10.1f}ms {percentile(answer_ms, q) / percentile(encode_ms, q):6.2f}x")
    if linear_ms:
        for q in (50, 95):
            print(f"{f'  without the models p{q}':34s} {percentile(linear_ms, q):8.1f}ms {percentile(encode_ms, q):10.1f}ms "
                  f"{percentile(linear_ms, q) / percentile(encode_ms, q):6.2f}x   (with them: "
                  f"{percentile(answer_ms, q) / percentile(linear_ms, q):.2f}x this)")


def raw_rate(index_dir: str) -> tuple[int, float]:
    """The number of chunks, and chunks per second of the bare model (on the graph the build runs it on) encoding
    what the build encodes: every chunk text, and every sentence on its own."""
    with closing(sqlite3.connect(current_generation(index_dir) / DATABASE_FILE)) as db:
        chunk_texts = [text for (text,) in db.execute("SELECT text FROM chunks ORDER BY id")]
        sentence_texts = [text for (text,) in db.execute("SELECT text FROM sentences ORDER BY id")]
    embedder = get_embedder()
    started = time.perf_counter()
    embedder.encode_texts(chunk_texts)
    embedder.encode_texts(sentence_texts)
    return len(chunk_texts), len(chunk_texts) / (time.perf_counter() - started)


def corpus_section(args: argparse.Namespace, results: dict) -> None:
    embedder = get_embedder()
    embedder.encode_texts(["warm up"])
    seeds = Path(args.articles).resolve() == (ROOT / "seeds").resolve()
    with tempfile.TemporaryDirectory(prefix="qa-bench-latency-") as scratch:
        index_dir = args.index or scratch
        first_rate = None
        if args.index:
            report = qa.build_index(args.articles, index_dir)  # brings a reused index up to date; usually a no-op
            build_rate = None
        else:
            if seeds:  # a first build in the process also pays for importing FAISS, bm25s, pysbd
                started = time.perf_counter()
                first = qa.build_index(args.articles, Path(scratch) / "first")
                first_rate = first.chunks_embedded / (time.perf_counter() - started)
            started = time.perf_counter()
            report = qa.build_index(args.articles, index_dir)
            build_rate = report.chunks_embedded / (time.perf_counter() - started)
        n_chunks, bare_rate = raw_rate(index_dir) if build_rate else (None, None)

        if args.questions:
            questions = [q.question for q in load_questions(args.questions)]
        elif seeds:
            questions = [q.question for q in load_questions(DEV)]
        else:
            questions = title_questions(index_dir)
        answer_ms, linear_ms, encode_ms = latency(questions, index_dir, args.rounds)
        summary = qa.describe_index(index_dir)

    print(f"articles: {args.articles} ({summary.n_articles} articles, {summary.n_chunks} chunks); "
          f"{len(questions)} questions x {args.rounds} rounds; backend {embedder.backend}; reranker {reranker_name()}, reader {reader_name()}")
    print_latency(answer_ms, encode_ms, linear_ms)
    if build_rate:
        print(f"{'build rate vs raw encoding rate':34s} {build_rate:6.1f}/s   {bare_rate:8.1f}/s   {build_rate / bare_rate:6.1%}")
    if first_rate:
        print(f"{'  first build in the process':34s} {first_rate:6.1f}/s   {bare_rate:8.1f}/s   {first_rate / bare_rate:6.1%}"
              "  (includes importing FAISS, bm25s, pysbd)")
    results["corpus"] = {
        "articles": str(args.articles), "n_articles": summary.n_articles, "n_chunks": summary.n_chunks,
        "backend": embedder.backend, "answer_p50_ms": percentile(answer_ms, 50), "answer_p95_ms": percentile(answer_ms, 95),
        "encode_p50_ms": percentile(encode_ms, 50), "encode_p95_ms": percentile(encode_ms, 95),
        "reranker": reranker_name(), "reader": reader_name(), "no_models_p50_ms": percentile(linear_ms, 50),
        "no_models_p95_ms": percentile(linear_ms, 95), "build_rate": build_rate, "raw_rate": bare_rate,
    }


def squad_section(args: argparse.Namespace, results: dict) -> None:
    questions: list[Question] = load_questions(Path(args.squad_dir) / "questions.jsonl")
    embedder = get_embedder()
    with tempfile.TemporaryDirectory(prefix="qa-bench-squad-") as scratch:
        index_dir = args.squad_index or scratch
        started = time.perf_counter()
        built = qa.build_index(Path(args.squad_dir) / "articles", index_dir)
        build_seconds = time.perf_counter() - started
        report = evaluate(questions, index_dir)
        encode_ms = []
        for question in questions[:: max(1, len(questions) // 200)]:
            started = time.perf_counter()
            embedder.encode_texts([question.question])
            encode_ms.append((time.perf_counter() - started) * 1000)
    hit3 = report.overall.answerable_hits / report.overall.answerable if report.overall.answerable else 0.0
    mean_chars = float(np.mean(report.quoted_characters or [0]))
    print(f"\nSQuAD ({len(questions)} questions, {built.added + built.unchanged} articles; index built in {build_seconds:.1f} s; "
          f"backend {embedder.backend})")
    print(f"{'hit@3':34s} {report.overall.answerable_hits}/{report.overall.answerable} ({hit3:.1%})")
    print(f"{'mean quoted chars per answer':34s} {mean_chars:.0f}")
    print(f"{'false abstentions':34s} {report.overall.false_abstentions}/{report.overall.answerable}")
    print(f"{'citation integrity':34s} {report.integrity:.1%}")
    print_latency(report.latencies_ms, encode_ms)
    results["squad"] = {
        "backend": embedder.backend, "reranker": reranker_name(), "questions": len(questions), "hit_at_3": hit3, "mean_quoted_chars": mean_chars,
        "false_abstentions": report.overall.false_abstentions, "integrity": report.integrity,
        "answer_p50_ms": percentile(report.latencies_ms, 50), "answer_p95_ms": percentile(report.latencies_ms, 95),
        "encode_p50_ms": percentile(encode_ms, 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", default=str(ROOT / "seeds"), help="articles folder (default: seeds/)")
    parser.add_argument("--index", help="reuse (and update) this index instead of building one in a temporary folder")
    parser.add_argument("--questions", help="JSON-lines question set (default: dev.jsonl on seeds, title questions elsewhere)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="times each question is asked (default: %(default)s)")
    parser.add_argument("--squad", action="store_true", help="also score the SQuAD questions")
    parser.add_argument("--squad-only", action="store_true", help="only score the SQuAD questions")
    parser.add_argument("--squad-dir", default=str(SQUAD), help="folder with articles/ and questions.jsonl (default: %(default)s)")
    parser.add_argument("--squad-index", help="reuse (and update) this SQuAD index")
    parser.add_argument("--faiss-threads", type=int, help="set faiss's OpenMP threads (default: leave faiss's own default)")
    parser.add_argument("--output", default=str(RESULTS / "answer_latency.json"), help="JSON results (default: %(default)s)")
    args = parser.parse_args()
    if args.faiss_threads:
        import faiss

        faiss.omp_set_num_threads(args.faiss_threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)

    results: dict = {}
    if not args.squad_only:
        corpus_section(args, results)
    if args.squad or args.squad_only:
        squad_section(args, results)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(output.read_text()) if output.exists() else {}
    key = f"{get_embedder().backend}:{Path(args.articles).name if not args.squad_only else 'squad'}"
    previous[key] = results
    output.write_text(json.dumps(previous, indent=2))


if __name__ == "__main__":
    main()
