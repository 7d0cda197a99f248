"""An archive at scale in Milvus Lite: the synthetic archive's first N articles built on Ray into one Milvus Lite file,
then answer latency and memory at that size.

Each run writes the first N articles of the synthetic archive (bench/synthetic.py) into the work folder and runs
`qa index --ray --ray-workers 2 --store milvus:WORK/milvus.db` on it, sampling the resident memory of the build's
processes (the driver, Milvus Lite, the Ray workers, Ray's own processes) every few seconds. A run with a larger N
embeds only the articles it adds, so an archive of 100,000 can be built over several runs. Then a fresh process, as a
served chat would, asks questions naming 40 of the articles' titles ROUNDS times each (questions on ONNX Runtime,
without PyTorch), and reads its own resident memory and its Milvus Lite process's from /proc. Appends one row per
run to bench/results/archive.json.

    .venv/bin/python bench/archive.py --count 2225 --work ~/.cache/qa-bench/archive-2k
    .venv/bin/python bench/archive.py --count 20000      # then 40000, … 100000: each run adds to the last
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from answer_latency import ROUNDS, percentile, title_questions  # bench/ is on the path as a script
from build import RESULTS
from processes import cmdline, process_tree, rss_kb
from synthetic import write_archive

DEFAULT_WORK = Path.home() / ".cache" / "qa-bench" / "archive"
SAMPLE_SECONDS = 5
WORKERS = 2
MEGABYTE = 1 << 20


def kind_of(pid: int) -> str:
    command = cmdline(pid).decode(errors="replace")
    if "milvus_lite" in command:
        return "milvus"
    return "ray_workers" if "MapWorker" in command else "ray_other"


def tree_rss(pid: int) -> dict[str, int]:
    """Resident bytes of process `pid` ("qa") and of its descendants, by kind."""
    parent, *descendants = process_tree(pid)
    totals = {"qa": rss_kb(parent) * 1024}
    for child in descendants:
        kind = kind_of(child)
        totals[kind] = totals.get(kind, 0) + rss_kb(child) * 1024
    return totals


def build(articles: Path, store: str) -> dict:
    """`qa index --ray` in its own process: its time, what it embedded, and each kind of process's peak memory."""
    command = [sys.executable, "-m", "qa.cli", "index", "--articles", str(articles), "--store", store,
               "--ray", "--ray-workers", str(WORKERS)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    peaks: dict[str, int] = {}

    def sample() -> None:
        while process.poll() is None:
            for kind, size in tree_rss(process.pid).items():
                peaks[kind] = max(peaks.get(kind, 0), size)
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"the build failed (exit code {process.returncode}); see its messages above")
    counts = re.search(r"(\d+) added, (\d+) updated, (\d+) removed, (\d+) unchanged; (\d+) chunks embedded", output)
    added, _, _, unchanged, chunks = (int(value) for value in counts.groups())
    return {"added": added, "unchanged": unchanged, "chunks_embedded": chunks, "seconds": round(seconds, 1),
            "chunks_per_second": round(chunks / seconds, 1) if chunks else None,
            "peak_rss_mb": {kind: round(size / MEGABYTE) for kind, size in sorted(peaks.items())}}


def measure(store: str, rounds: int) -> dict:
    """Run in a fresh process: answer the title questions, then the memory of this process and of Milvus Lite."""
    import qa

    summary = qa.describe_index(store=store)
    questions = title_questions(store)
    started = time.perf_counter()
    qa.answer(questions[0], store=store)
    first_ms = (time.perf_counter() - started) * 1000
    answer_ms, abstained = [], 0
    for _ in range(rounds):
        for question in questions:
            started = time.perf_counter()
            reply = qa.answer(question, store=store)
            answer_ms.append((time.perf_counter() - started) * 1000)
            abstained += reply.abstained
    memory = tree_rss(os.getpid())
    return {"articles": summary.n_articles, "chunks": summary.n_chunks, "sentences": summary.n_sentences,
            "questions": len(answer_ms), "abstained": abstained, "first_answer_ms": round(first_ms),
            "answer_p50_ms": round(percentile(answer_ms, 50), 1), "answer_p95_ms": round(percentile(answer_ms, 95), 1),
            "rss_mb": {"qa": round(memory["qa"] / MEGABYTE), "milvus": round(memory.get("milvus", 0) / MEGABYTE)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, help="articles the archive holds after this run")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder, kept between runs (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="times each question is asked (default: %(default)s)")
    parser.add_argument("--measure", metavar="STORE", help=argparse.SUPPRESS)  # the fresh answering process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.rounds)))
        return
    if not args.count or args.count < 1:
        parser.error("--count must be at least 1")
    articles, store = args.work / "articles", f"milvus:{args.work / 'milvus.db'}"
    write_archive(args.count, articles)
    built = build(articles, store)
    print(f"built: {json.dumps(built)}", flush=True)
    answered = subprocess.run([sys.executable, __file__, "--measure", store, "--rounds", str(args.rounds)],
                              capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), check=True)
    measured = json.loads(answered.stdout.strip().splitlines()[-1])
    print(f"answered: {json.dumps(measured)}")
    results = RESULTS / "archive.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    rows.append({"date": time.strftime("%Y-%m-%d"), "work": str(args.work), "build": built, "answers": measured})
    results.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
