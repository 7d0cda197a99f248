"""Load: N simulated chat users asking questions of `qa serve` on loopback for a fixed time.

Starts `qa serve` on a free local port over an index of the seeds, then runs N users, each with its own HTTP
connection, asking questions from a question file in turn through the chat's `/ask_question` event, as Gradio's
HTTP API serves it (httpx, not gradio_client: 16 gradio_client instances took as much CPU as the server they
measured, on the same two cores).
Prints requests served, errors and latency percentiles. Traffic goes to 127.0.0.1 only, and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

import qa
from qa.evaluate import load_questions

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "eval" / "dev.jsonl"
STARTUP_SECONDS = 120
REQUEST_TIMEOUT_SECONDS = 60
MESSAGES_OUTPUT = 2
"""Where the chat's messages stand among `/ask_question`'s outputs (the question box, the conversation, the chat...)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect(url: str, server: subprocess.Popen) -> None:
    """Wait until `qa serve` answers at `url`."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            httpx.get(url + "gradio_api/info", timeout=5).raise_for_status()
            return
        except httpx.HTTPError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qa serve did not start") from None
            time.sleep(0.25)


def ask(client: httpx.Client, question: str) -> list[dict]:
    """The chat's messages after asking `question` in a new conversation, as the page's `/ask_question` event returns
    them: queued by one POST, then read from its event stream until it completes."""
    reply = client.post("call/v2/ask_question", json={"text": question, "messages": []})
    reply.raise_for_status()
    event = ""
    with client.stream("GET", f"call/ask_question/{reply.json()['event_id']}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = json.loads(line.partition(":")[2])
                if event == "error":
                    raise RuntimeError(f"the chat failed: {data}")
                return data[MESSAGES_OUTPUT]
    raise RuntimeError("the event stream ended before the answer")


def user(url: str, questions: list[str], offset: int, stop_at: float, latencies: list[float], errors: list[str]) -> None:
    turn = offset
    with httpx.Client(base_url=url + "gradio_api/", timeout=REQUEST_TIMEOUT_SECONDS) as client:
        while time.monotonic() < stop_at:
            question = questions[turn % len(questions)]
            turn += 1
            started = time.perf_counter()
            try:
                messages = ask(client, question)
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
