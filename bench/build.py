"""Full index builds of the BBC corpus and of 100/500/1000-article subsets, next to the model's raw encoding rate.

For each size a fresh process (so peak memory is per build) loads the model, builds the index into a
temporary folder, and has the bare model (tokenise, run, mean-pool, on the graph the build runs) encode the very
same texts the build encodes: every chunk, and every sentence on its own. Build chunks/s against the chunks/s of
that bare work, in the same process, so the ratio holds even on a busy machine. Then it asks 40 questions about
the corpus's stories: answer() p50/p95 next to the bare query encoding (the figures bench/plot.py draws against
corpus size). Subsets are the first N article files ordered by (file name, category folder), i.e. taken in turn
from the five categories, copied into a temporary folder (qa skips symlinks leading outside the folder).

    .venv/bin/python bench/build.py                      # 100, 500, 1000 and all 2,225 articles
    .venv/bin/python bench/build.py --sizes 100 --profile  # also cProfile the build: where the time goes
    QA_BACKEND=onnx .venv/bin/python bench/build.py      # the same on the ONNX Runtime backend

Writes bench/results/build.json (read by bench/plot.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BBC = ROOT.parent / "shared" / "corpora" / "bbc"
RESULTS = ROOT / "bench" / "results"
SUFFIXES = (".txt", ".md")
QUESTIONS = 40


def article_files(corpus: Path) -> list[Path]:
    """Article files (not SOURCE.md/README.md at the top), ordered by (file name, folder)."""
    files = [p for p in corpus.rglob("*") if p.is_file() and p.suffix in SUFFIXES and p.parent != corpus]
    return sorted(files, key=lambda p: (p.name, p.parent.name))


def make_subset(corpus: Path, size: int, target: Path) -> Path:
    for source in article_files(corpus)[:size]:
        destination = target / source.relative_to(corpus)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return target


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def answer_latency(index_dir: str, titles: list[str]) -> tuple[list[float], list[float]]:
    """answer() and bare query-encoding times (ms) for questions about articles of the corpus, asked twice."""
    from answer_latency import latency  # bench/ is on the path when this runs as a script

    return latency([f"What happened in the story “{title}”?" for title in titles], index_dir, rounds=2)


def worker(articles: str, label: str, profile: str | None) -> dict:
    """One build in this process: the model is loaded first (not timed), as in a long-running server."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)
    import qa
    from qa.embeddings import get_embedder
    from qa.store.embedded import DATABASE_FILE, current_generation

    embedder = get_embedder()
    embedder.encode_chunks(["warm up the model"], [[(0, 4)]])
    embedder.encode_texts(["warm up"])
    rss_model = peak_rss_mb()

    def raw_encode(texts: list[str]) -> float:
        started = time.perf_counter()
        embedder.encode_texts(texts)  # the bare model on the graph the build runs: tokenise, run, mean-pool
        return time.perf_counter() - started

    # The bare model encodes every other chunk and sentence text before the build and the rest after it, so that a
    # machine getting busier or quieter during the run does not bias the ratio.
    from qa.articles import read_articles
    from qa.chunks import chunk_article, sentence_text

    corpus_articles = read_articles(Path(articles).resolve()).articles
    chunked = [(a, *chunk_article(a, embedder.count_tokens)) for a in corpus_articles]
    expected = [c.text for _, _, chunks in chunked for c in chunks]
    sentences = [sentence_text(a, s) for a, article_sentences, _ in chunked for s in article_sentences]
    titles = [a.title for a in corpus_articles[:: max(1, len(corpus_articles) // QUESTIONS)]][:QUESTIONS]
    raw_before = raw_encode(expected[0::2]) + raw_encode(sentences[0::2])
    with tempfile.TemporaryDirectory(prefix="qa-bench-build-") as index_dir:
        started = time.perf_counter()
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            report = profiler.runcall(qa.build_index, articles, index_dir)
            profiler.dump_stats(profile)
        else:
            report = qa.build_index(articles, index_dir)
        build_seconds = time.perf_counter() - started
        rss_build = peak_rss_mb()
        answer_ms, encode_ms = answer_latency(index_dir, titles)
        generation = current_generation(index_dir)
        index_bytes = folder_bytes(Path(index_dir))  # the live generation and the segments it reads
        with closing(sqlite3.connect(generation / DATABASE_FILE)) as db:
            chunk_texts = [text for (text,) in db.execute("SELECT text FROM chunks ORDER BY id")]
            n_sentences = db.execute("SELECT COUNT(*) FROM sentences").fetchone()[0]
    raw_after = raw_encode(chunk_texts[1::2]) + raw_encode(sentences[1::2])
    raw_seconds = raw_before + raw_after
    if len(expected) != len(chunk_texts):
        print(f"warning: {len(expected)} chunks expected, {len(chunk_texts)} built", file=sys.stderr)
    if len(sentences) != n_sentences:
        print(f"warning: {len(sentences)} sentences expected, {n_sentences} built", file=sys.stderr)
    return {
        "label": label,
        "backend": embedder.backend,
        "articles": report.added,
        "skipped": len(report.skipped),
        "chunks": report.chunks_embedded,
        "sentences": n_sentences,
        "raw_sentences": len(sentences),
        "build_seconds": build_seconds,
        "build_rate": report.chunks_embedded / build_seconds,
        "raw_seconds": raw_seconds,
        "raw_rate": len(chunk_texts) / raw_seconds,
        "index_mb": index_bytes / 1e6,
        "rss_model_mb": rss_model,
        "rss_build_mb": rss_build,
        "answer_p50_ms": float(np.percentile(answer_ms, 50)),
        "answer_p95_ms": float(np.percentile(answer_ms, 95)),
        "encode_p50_ms": float(np.percentile(encode_ms, 50)),
    }


def run_size(size: int | None, corpus: Path, profile_dir: Path | None) -> dict:
    label = "all" if size is None else str(size)
    with tempfile.TemporaryDirectory(prefix="qa-bench-articles-") as subset:
        articles = str(corpus) if size is None else str(make_subset(corpus, size, Path(subset)))
        command = [sys.executable, __file__, "--worker", articles, "--label", label]
        if profile_dir:
            command += ["--profile-to", str(profile_dir / f"build-{label}.prof")]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    header = (f"{'articles':>8s} {'chunks':>7s} {'build s':>8s} {'build/s':>8s} {'raw/s':>7s} {'ratio':>6s} "
              f"{'index MB':>9s} {'peak RSS MB':>12s} {'answer p50':>11s} {'p95':>6s} {'encode p50':>11s}")
    print(f"backend: {rows[0]['backend']}")
    print(header)
    for r in rows:
        print(f"{r['articles']:>8d} {r['chunks']:>7d} {r['build_seconds']:>8.1f} {r['build_rate']:>8.1f} {r['raw_rate']:>7.1f} "
              f"{r['build_rate'] / r['raw_rate']:>6.1%} {r['index_mb']:>9.1f} {r['rss_build_mb']:>12.0f} "
              f"{r['answer_p50_ms']:>9.1f}ms {r['answer_p95_ms']:>6.1f} {r['encode_p50_ms']:>9.1f}ms")
    print("build/s: chunks embedded per second of build_index (model already loaded); raw/s: chunks per second of "
          "the bare model encoding the same chunk texts and each sentence on its own, same process; peak RSS includes "
          f"the loaded model ({rows[0]['rss_model_mb']:.0f} MB before the build); answer: qa.answer() on {QUESTIONS} questions naming "
          "articles' titles, twice each, beside the bare encoding of the same questions")


def print_profile(path: Path, limit: int = 25) -> None:
    import pstats

    print(f"\ncProfile of the build ({path.name}), by cumulative time:")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(limit)
    print("by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(BBC), help="articles folder (default: ../shared/corpora/bbc)")
    parser.add_argument("--sizes", default="100,500,1000,all", help="comma-separated subset sizes; 'all' is the whole corpus")
    parser.add_argument("--profile", action="store_true", help="cProfile each build and print where the time goes")
    parser.add_argument("--output", default=str(RESULTS / "build.json"), help="JSON results (default: %(default)s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.label, args.profile_to)))
        return

    corpus = Path(args.corpus)
    sizes = [None if s.strip() == "all" else int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="qa-bench-prof-") as profiles:
        for size in sizes:
            rows.append(run_size(size, corpus, Path(profiles) if args.profile else None))
            r = rows[-1]
            print(f"  built {r['label']:>5s}: {r['articles']} articles, {r['chunks']} chunks in {r['build_seconds']:.1f} s "
                  f"({r['build_rate'] / r['raw_rate']:.1%} of raw)", file=sys.stderr, flush=True)
        print_table(rows)
        if args.profile:
            for r in rows:
                print_profile(Path(profiles) / f"build-{r['label']}.prof")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(output.read_text()) if output.exists() else {}
    previous[rows[0]["backend"]] = {r["label"]: r for r in rows} | {
        k: v for k, v in previous.get(rows[0]["backend"], {}).items() if k not in {r["label"] for r in rows}
    }
    output.write_text(json.dumps(previous, indent=2))


if __name__ == "__main__":
    main()
