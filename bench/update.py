"""Incremental updates on a built BBC index: nothing changed, one article changed, one added, one removed.

Each case is timed twice: as a user runs it (`qa index --articles A --index I`, a fresh process that
imports qa and, when something must be embedded, loads the model) and in-process (`qa.build_index` with
the model already loaded, as in the web chat). The corpus is copied into a temporary work folder (the
articles must be edited), indexed once (several minutes: every chunk is embedded), then edited.

    .venv/bin/python bench/update.py                          # work folder in /tmp, removed afterwards
    .venv/bin/python bench/update.py --workdir /tmp/qa-upd    # keep it: later runs skip the first build
    .venv/bin/python bench/update.py --profile                # cProfile the in-process one-changed update

Targets: nothing changed, the `qa index` process < 2 s without loading the model; one changed
article in-process < 1 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BBC = ROOT.parent / "shared" / "corpora" / "bbc"
RESULTS = ROOT / "bench" / "results"
QA = Path(sys.executable).with_name("qa")
HEAVY = ("torch", "sentence_transformers", "transformers", "faiss", "bm25s", "pysbd", "gradio", "onnxruntime")
PROFILE = Path(tempfile.gettempdir()) / "qa-bench-update-changed.prof"
REPORT_LINE = re.compile(r"(\d+) added, (\d+) updated, (\d+) removed, (\d+) unchanged.*?(\d+) chunks embedded")

NEW_ARTICLE = """Bench city opens new library

The city council opened a new public library on Monday, the first in the district for thirty years.
The building holds 120,000 books and a room for children, and it stays open until ten in the evening.
"It is a place for everyone," the mayor said at the opening, where hundreds of residents queued outside.
"""


def run_cli(articles: Path, index: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([str(QA), "index", "--articles", str(articles), "--index", str(index)],
                            capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout + result.stderr


def heavy_modules_loaded(articles: Path, index: Path) -> list[str]:
    """Which heavy libraries a `qa index` run imports (run again with nothing changed)."""
    code = ("import sys; from qa.cli import main; rc = main(['index', '--articles', sys.argv[1], '--index', sys.argv[2]]); "
            f"print('LOADED', ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(articles), str(index)], capture_output=True, text=True, check=True).stdout
    return [m for m in out.rsplit("LOADED", 1)[-1].strip().split(",") if m]


def chunks_from_output(output: str) -> int | None:
    match = REPORT_LINE.search(output)
    return int(match.group(5)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(BBC), help="articles to copy (default: ../shared/corpora/bbc)")
    parser.add_argument("--workdir", help="keep the copied articles and index here (reused when present)")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process one-changed update")
    parser.add_argument("--output", default=str(RESULTS / "update.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)

    temporary = None if args.workdir else tempfile.TemporaryDirectory(prefix="qa-bench-update-")
    work = Path(args.workdir or temporary.name)
    articles, index = work / "articles", work / "index"
    try:
        if not articles.exists():
            shutil.copytree(args.corpus, articles)
        for stale in articles.glob("bench-new-*.txt"):
            stale.unlink()
        import qa
        from qa.embeddings import get_embedder

        started = time.perf_counter()
        first = qa.build_index(articles, index)
        print(f"  first build: {first.added} added, {first.chunks_embedded} chunks in {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)
        get_embedder().encode_texts(["warm up"])  # in-process cases run with the model loaded

        target = sorted(articles.rglob("*.txt"))[len(list(articles.rglob("*.txt"))) // 2]
        original = target.read_bytes()
        rows = []

        def case(name: str, change, *, profile: bool = False) -> None:
            change("process")
            seconds, output = run_cli(articles, index)
            rows.append({"case": name, "mode": "qa index process", "seconds": seconds, "chunks": chunks_from_output(output)})
            change("in-process")
            if profile:
                import cProfile

                profiler = cProfile.Profile()
                started = time.perf_counter()
                report = profiler.runcall(qa.build_index, articles, index)
            else:
                started = time.perf_counter()
                report = qa.build_index(articles, index)
            rows.append({"case": name, "mode": "in-process", "seconds": time.perf_counter() - started,
                         "chunks": report.chunks_embedded})
            if profile:
                profiler.dump_stats(str(PROFILE))

        case("nothing changed", lambda mode: None)
        loaded = heavy_modules_loaded(articles, index)
        case("one article changed",
             lambda mode: target.write_bytes(original + f"\nA sentence added for the {mode} update bench.\n".encode()),
             profile=args.profile)
        case("one article added",
             lambda mode: (articles / f"bench-new-{mode}.txt").write_text(NEW_ARTICLE.replace("Bench", f"Bench {mode}"),
                                                                         encoding="utf-8"))
        case("one article removed", lambda mode: (articles / f"bench-new-{mode}.txt").unlink())
        target.write_bytes(original)
    finally:
        if temporary:
            temporary.cleanup()

    print(f"index: {first.added + first.unchanged} articles; changed article: {target.relative_to(articles)}")
    print(f"{'case':22s} {'mode':18s} {'seconds':>8s} {'chunks embedded':>16s}")
    for r in rows:
        print(f"{r['case']:22s} {r['mode']:18s} {r['seconds']:>8.2f} {r['chunks'] if r['chunks'] is not None else '?':>16}")
    print(f"heavy libraries imported by `qa index` with nothing changed: {', '.join(loaded) or 'none'}")
    if args.profile:
        import pstats

        print("\ncProfile of the in-process one-changed update, by cumulative time:")
        pstats.Stats(str(PROFILE)).sort_stats("cumulative").print_stats(30)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"rows": rows, "heavy_modules_nothing_changed": loaded}, indent=2))


if __name__ == "__main__":
    main()
