"""The index follows the folder by itself: `qa serve` on a folder never indexed, then files dropped into it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
START_SECONDS = 180
FOLLOW_SECONDS = 10
"""The promise: a file dropped into the served folder is quoted within this many seconds, without touching the page."""
LIMA_QUESTION = "Where did the leaders of Japan, the United States and South Korea meet in November 2024?"
DROPPED_FACT = "The Velmont orchard cooperative harvested nine hundred tonnes of plums this autumn."
DROPPED_QUESTION = "How many tonnes of plums did the Velmont orchard cooperative harvest?"
LANTERN_FACT = "The Harbin riverside festival floated four thousand lanterns on the Songhua this spring."
LANTERN_QUESTION = "How many lanterns did the Harbin riverside festival float on the Songhua?"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ask(client, question: str) -> str:
    """The chat's reply in a new conversation, as its reader reads it: without the bold marks around the short answer."""
    _, messages, *_ = client.predict(question, [], api_name="/ask_question")
    return messages[-1]["content"][0]["text"].replace("**", "") if messages else ""


def _answer_within(client, question: str, expected: str, seconds: float) -> str:
    """Ask until the reply holds `expected` or `seconds` have passed; returns the last reply."""
    deadline = time.monotonic() + seconds
    reply = _ask(client, question)
    while expected not in reply and time.monotonic() < deadline:
        time.sleep(0.5)
        reply = _ask(client, question)
    return reply


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`qa serve` on a copy of the seeds and an index folder that does not exist yet."""
    from gradio_client import Client

    work = tmp_path_factory.mktemp("watch")
    articles, index, log = work / "articles", work / "never-built", work / "serve.log"
    shutil.copytree(SEEDS, articles)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "QA_AUTH": ""}
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "qa.cli", "serve", "--articles", str(articles), "--index", str(index), "--port", str(port)],
            stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"qa serve did not start:\n{log.read_text(errors='replace')}")
                time.sleep(0.5)
        yield {"client": client, "articles": articles, "log": log, "server": server}
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_serve_builds_a_missing_index_and_answers_from_it(served):
    reply = _ask(served["client"], LIMA_QUESTION)  # asked at once: it waits for the first build, then is answered
    assert "Lima" in reply, reply


def test_a_file_dropped_into_the_folder_is_quoted_within_seconds(served):
    client = served["client"]
    assert "Lima" in _answer_within(client, LIMA_QUESTION, "Lima", START_SECONDS)
    assert "nine hundred tonnes" not in _ask(client, DROPPED_QUESTION)
    dropped = served["articles"] / "orchard.txt"
    with dropped.open("w", encoding="utf-8") as handle:  # written in two parts, as a slow copy would
        handle.write("Plum harvest\n\nMarch 3, 2025\n\n")
        handle.flush()
        time.sleep(0.3)
        handle.write(DROPPED_FACT + "\n")
    reply = _answer_within(client, DROPPED_QUESTION, "nine hundred tonnes", FOLLOW_SECONDS)
    assert "nine hundred tonnes" in reply, f"not quoted within {FOLLOW_SECONDS} s: {reply}"

    dropped.unlink()
    reply = _answer_within(client, DROPPED_QUESTION, "do not say", FOLLOW_SECONDS)
    assert "nine hundred tonnes" not in reply, "a deleted file leaves the index by itself"


def test_a_killed_build_worker_loses_no_change(served):
    """Builds embed in a worker process; killing it (as the system would, out of memory) loses no change."""
    client = served["client"]
    assert "Lima" in _answer_within(client, LIMA_QUESTION, "Lima", START_SECONDS)
    workers = [pid for pid in _children(served["server"].pid) if b"spawn_main" in _cmdline(pid)]
    assert workers, "the server embeds in a worker process"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    (served["articles"] / "lantern.txt").write_text(f"Lantern festival\n\nMarch 4, 2025\n\n{LANTERN_FACT}\n",
                                                    encoding="utf-8")
    reply = _answer_within(client, LANTERN_QUESTION, "Lantern festival", START_SECONDS)
    assert "four thousand" in reply and "Lantern festival" in reply, reply


def _children(pid: int) -> list[int]:
    """Child processes, whichever of the server's threads started them."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""
