"""The embedded store beside Milvus Lite on the 2,225 BBC stories: build, a one-article update, answer latency, SQuAD.

For each store the script builds the BBC stories from scratch (the model loaded beforehand, as in a server),
changes one article and updates, times `answer()` on questions naming 40 of the stories' titles, and scores
SQuAD dev (its four articles in a store of the same kind). Both stores embed with the same model, so build
times differ by what each store does with the vectors: segment files and FAISS, or inserts into Milvus.

    .venv/bin/python bench/stores.py                       # both stores, work folder in /tmp (removed afterwards)
    .venv/bin/python bench/stores.py --work /tmp/qa-stores # keep the work folder
    .venv/bin/python bench/stores.py --stores milvus       # one store

Writes bench/results/stores.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import qa
from answer_latency import ROUNDS, latency, percentile, title_questions  # bench/ is on the path as a script
from qa.embeddings import get_embedder
from qa.evaluate import evaluate, load_questions

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BBC = SHARED / "corpora" / "bbc"
SQUAD = SHARED / "eval" / "squad"
RESULTS = ROOT / "bench" / "results"
STORES = ("embedded", "milvus")
CHANGED_ARTICLE = "business/001.txt"


def location(kind: str, folder: Path) -> str:
    return str(folder) if kind == "embedded" else f"milvus:{folder / 'qa.db'}"


def measure(kind: str, work: Path) -> dict:
    articles = work / "bbc"
    if not articles.exists():
        shutil.copytree(BBC, articles)
    store = location(kind, work / f"{kind}-bbc")
    started = time.perf_counter()
    built = qa.build_index(articles, store=store, rebuild=True)
    build_seconds = time.perf_counter() - started

    changed = articles / CHANGED_ARTICLE
    original = changed.read_text(encoding="utf-8")
    changed.write_text(original + "\nA late paragraph was added to this story for the benchmark.\n", encoding="utf-8")
    started = time.perf_counter()
    update = qa.build_index(articles, store=store)
    update_seconds = time.perf_counter() - started
    changed.write_text(original, encoding="utf-8")
    qa.build_index(articles, store=store)

    answer_ms, encode_ms = latency(title_questions(store), store, ROUNDS)
    squad_store = location(kind, work / f"{kind}-squad")
    qa.build_index(SQUAD / "articles", store=squad_store, rebuild=True)
    squad = evaluate(load_questions(SQUAD / "questions.jsonl"), store=squad_store).overall
    return {
        "store": kind,
        "articles": built.added,
        "build_s": build_seconds,
        "chunks": built.chunks_embedded,
        "chunks_per_s": built.chunks_embedded / build_seconds,
        "update_one_s": update_seconds,
        "update_chunks": update.chunks_embedded,
        "answer_p50_ms": percentile(answer_ms, 50),
        "answer_p95_ms": percentile(answer_ms, 95),
        "encode_p50_ms": percentile(encode_ms, 50),
        "squad_hit_at_3": squad.answerable_hits / squad.answerable,
        "squad_false_abstentions": squad.false_abstentions / squad.answerable,
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'store':10s} {'build':>9s} {'chunks/s':>9s} {'1-article update':>17s} {'answer p50':>11s} "
          f"{'p95':>9s} {'SQuAD hit@3':>12s}")
    for row in rows:
        print(f"{row['store']:10s} {row['build_s']:8.0f}s {row['chunks_per_s']:9.1f} {row['update_one_s']:16.2f}s "
              f"{row['answer_p50_ms']:9.1f}ms {row['answer_p95_ms']:7.1f}ms {row['squad_hit_at_3']:11.1%}")
    print(f"({rows[0]['articles']} BBC stories, {rows[0]['chunks']} chunks; query encoding alone p50 "
          f"{rows[0]['encode_p50_ms']:.1f} ms; backend {get_embedder().backend})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="work folder to keep (default: a temporary folder, removed afterwards)")
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--output", default=str(RESULTS / "stores.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)
    get_embedder().encode_texts(["warm up"])
    with tempfile.TemporaryDirectory(prefix="qa-bench-stores-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        rows = [measure(kind, work) for kind in args.stores]
    print_table(rows)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
