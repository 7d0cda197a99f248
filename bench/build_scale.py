"""Build throughput on Ray: a plain build against `--ray` builds with 1 and 2 workers, each pinned to one thread, and
what Milvus Lite takes in: a 2-worker build streaming its rows into a Milvus Lite file, and the insert alone.

Each build indexes the same BBC subset (the first N article files, as bench/build.py takes them) into a fresh
temporary store and reports chunks embedded a second over the whole build: reading, chunking, embedding and the
store's write, and for Ray the start of a local instance and of its actors too. A plain build runs in one process
that spreads the model over both cores; a Ray worker runs it on one. The insert alone writes the same articles,
embedded beforehand, into a fresh Milvus Lite file: the rate at which the driver can hand rows to Milvus, against
which the workers' rate is set in the README's arithmetic for a cluster. Prints a table and writes
bench/results/build_scale.json ("Scaling out").

    .venv/bin/python bench/build_scale.py                  # 400 BBC stories
    .venv/bin/python bench/build_scale.py --articles 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from build import BBC, RESULTS, make_subset

import qa
from qa import config
from qa.articles import read_articles
from qa.distributed import DEFAULT_ARTICLES_PER_BATCH, RaySettings
from qa.embeddings import backend_name
from qa.index import Encoder, embed_articles
from qa.store import Update, open_store

WORKERS = (1, 2)
INTO_MILVUS = "ray, 2 workers, into Milvus Lite"


def milvus_insert(folder: Path, store: str) -> dict:
    """The articles of `folder`, embedded first, written into the Milvus Lite file `store`; only the write is timed."""
    encoder = Encoder(config.model_name(), backend_name())
    embedded = embed_articles(read_articles(folder).articles, encoder, None)
    started = time.perf_counter()
    open_store(store).write(Update(encoder.model, encoder.backend, str(folder), [], embedded, rebuild=True))
    seconds = time.perf_counter() - started
    chunks = sum(len(e.chunks) for e in embedded)
    rows = sum(1 + len(e.chunks) + len(e.sentences) for e in embedded)
    return {"articles": len(embedded), "chunks": chunks, "rows": rows, "seconds": round(seconds, 1),
            "chunks_per_second": round(chunks / seconds, 1), "rows_per_second": round(rows / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=400, help="BBC stories to index (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=DEFAULT_ARTICLES_PER_BATCH,
                        help="articles per Ray batch (default: %(default)s)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    runs = {}
    with tempfile.TemporaryDirectory() as work:
        folder = make_subset(BBC, args.articles, Path(work) / "articles")
        builds = {"plain": (None, None),
                  **{f"ray, {n} worker{'s' * (n > 1)}": (RaySettings(workers=n, articles_per_batch=args.batch), None)
                     for n in WORKERS},
                  INTO_MILVUS: (RaySettings(workers=2, articles_per_batch=args.batch), f"milvus:{work}/ray-milvus/qa.db")}
        for name, (ray, store) in builds.items():
            index_dir = Path(work) / name.replace(", ", "-").replace(" ", "_")
            report = qa.build_index(folder, index_dir, store=store, ray=ray)
            runs[name] = {"chunks": report.chunks_embedded, "seconds": round(report.seconds, 1),
                          "chunks_per_second": round(report.chunks_embedded / report.seconds, 1)}
            print(f"{name:34s} {report.chunks_embedded:6d} chunks in {report.seconds:6.1f} s: "
                  f"{runs[name]['chunks_per_second']:5.1f} chunks/s", flush=True)
        insert = milvus_insert(folder, f"milvus:{work}/insert/qa.db")
        print(f"{'Milvus Lite insert alone':34s} {insert['chunks']:6d} chunks ({insert['rows']} rows) in "
              f"{insert['seconds']:6.1f} s: {insert['chunks_per_second']:5.1f} chunks/s, {insert['rows_per_second']} rows/s")
    one, two, plain = (runs[k]["chunks_per_second"] for k in ("ray, 1 worker", "ray, 2 workers", "plain"))
    summary = {"articles": args.articles, "articles_per_batch": args.batch, "runs": runs, "milvus_lite_insert": insert,
               "two_workers_over_one": round(two / one, 2), "two_workers_over_plain": round(two / plain, 2)}
    print(f"2 workers / 1 worker: {two / one:.2f}x; 2 workers / plain build: {two / plain:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "build_scale.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
