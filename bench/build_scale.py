"""Build throughput on Ray: a plain build against `--ray` builds with 1 and 2 workers, each pinned to one thread.

Each build indexes the same BBC subset (the first N article files, as bench/build.py takes them) into a fresh
temporary folder and reports chunks embedded a second over the whole build: reading, chunking, embedding and the
store's write, and for Ray the start of a local instance and of its actors too. A plain build runs in one process
that spreads the model over both cores; a Ray worker runs it on one. Prints a table and writes
bench/results/build_scale.json, with the arithmetic for a cluster (README "Scaling out").

    .venv/bin/python bench/build_scale.py                  # 400 BBC stories
    .venv/bin/python bench/build_scale.py --articles 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from build import BBC, RESULTS, make_subset

import qa
from qa.distributed import DEFAULT_ARTICLES_PER_BATCH, RaySettings

WORKERS = (1, 2)


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
        settings = {"plain": None, **{f"ray, {n} worker{'s' * (n > 1)}": RaySettings(workers=n, articles_per_batch=args.batch)
                                      for n in WORKERS}}
        for name, ray in settings.items():
            report = qa.build_index(folder, Path(work) / name.replace(", ", "-").replace(" ", "_"), ray=ray)
            runs[name] = {"chunks": report.chunks_embedded, "seconds": round(report.seconds, 1),
                          "chunks_per_second": round(report.chunks_embedded / report.seconds, 1)}
            print(f"{name:18s} {report.chunks_embedded:6d} chunks in {report.seconds:6.1f} s: "
                  f"{runs[name]['chunks_per_second']:5.1f} chunks/s", flush=True)
    one, two, plain = (runs[k]["chunks_per_second"] for k in ("ray, 1 worker", "ray, 2 workers", "plain"))
    summary = {"articles": args.articles, "runs": runs, "two_workers_over_one": round(two / one, 2),
               "two_workers_over_plain": round(two / plain, 2)}
    print(f"2 workers / 1 worker: {two / one:.2f}x; 2 workers / plain build: {two / plain:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "build_scale.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
