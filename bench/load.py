"""Load: N simulated chat users asking questions of `qa serve` on loopback for a fixed time.

Starts `qa serve` on a free local port over an index of the seeds, then runs N users, each with its own
Gradio client, asking questions from a question file in turn through the chat's `/ask_question` endpoint.
Prints requests served, errors and latency percentiles. Traffic goes to 127.0.0.1 only, and stops by itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import qa
from qa.evaluate import load_questions

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "eval" / "dev.jsonl"
STARTUP_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect(url: str, server: subprocess.Popen):
    from gradio_client import Client

    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qa serve did not start") from None
            time.sleep(0.25)


def user(url: str, questions: list[str], offset: int, stop_at: float, latencies: list[float], errors: list[str]) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    turn = offset
    while time.monotonic() < stop_at:
        question = questions[turn % len(questions)]
        turn += 1
        started = time.perf_counter()
        try:
            _, messages, *_ = client.predict(question, [], api_name="/ask_question")
            if not messages or "No answer" in messages[-1]["content"][0]["text"]:
                raise RuntimeError(f"no answer to {question!r}")
        except Exception as error:  # every failure counts as an error in the report
            errors.append(f"{type(error).__name__}: {error}")
            continue
        latencies.append((time.perf_counter() - started) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16, help="concurrent users (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60, help="how long they ask (default: %(default)s)")
    parser.add_argument("--questions", default=str(DEV), help="JSON-lines question file (default: shared dev.jsonl)")
    parser.add_argument("--articles", default=str(ROOT / "seeds"), help="articles folder (default: seeds/)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    questions = [q.question for q in load_questions(args.questions)]

    with tempfile.TemporaryDirectory() as index_dir:
        qa.build_index(args.articles, index_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        server = subprocess.Popen(
            [sys.executable, "-m", "qa.cli", "serve", "--articles", args.articles, "--index", index_dir, "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
        try:
            connect(url, server)
            latencies: list[float] = []
            errors: list[str] = []
            stop_at = time.monotonic() + args.seconds
            users = [
                threading.Thread(target=user, args=(url, questions, n, stop_at, latencies, errors)) for n in range(args.users)
            ]
            started = time.monotonic()
            for thread in users:
                thread.start()
            for thread in users:
                thread.join()
            elapsed = time.monotonic() - started
        finally:
            server.terminate()
            server.wait(timeout=30)

    values = np.array(latencies or [float("nan")])
    print(f"{args.users} users for {args.seconds:.0f} s against qa serve on loopback ({len(questions)} questions in turn)")
    print(f"{'requests served':18s} {len(latencies)} ({len(latencies) / elapsed:.1f}/s)")
    print(f"{'errors':18s} {len(errors)}")
    for q in (50, 95, 99):
        print(f"{f'latency p{q}':18s} {np.percentile(values, q):.0f} ms")
    for error in sorted(set(errors))[:5]:
        print(f"  {error}")


if __name__ == "__main__":
    main()
