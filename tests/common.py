"""What several test files share: the seeds and dev set, stores of each kind, and asking from a new process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
SHARED = ROOT.parent / "shared"
DEV = SHARED / "eval" / "dev.jsonl"
ENV = dict(os.environ, HF_HUB_OFFLINE="1")
MEETING_QUESTION = "When will the three countries meet to formally establish the secretariat?"
BUDGET_QUESTION = "What does the port budget fund?"
BUDGET_ARTICLES = 30
STORES = ["embedded", "milvus"]


def store_location(kind: str, folder: Path) -> str:
    """A new, empty store of `kind` in `folder`: each Milvus Lite file is served by its own process."""
    return str(folder / "index") if kind == "embedded" else f"milvus:{folder / 'index' / 'qa.db'}"


def copy_seeds(folder: Path) -> Path:
    shutil.copytree(SEEDS, folder)
    return folder


def add_budget_articles(folder: Path) -> None:
    """BUDGET_ARTICLES articles of 40 sentences each on a port budget, which the seeds never mention."""
    for number in range(BUDGET_ARTICLES):
        text = " ".join(f"Clause {number}-{k} of the port budget funds dredging work number {k}." for k in range(40))
        (folder / f"budget_{number:02d}.txt").write_text(f"Port budget {number}\n\n{text}\n", encoding="utf-8")


def ask_in_new_process(question: str, store: str | Path) -> subprocess.CompletedProcess:
    """`qa ask` in its own process, as a user runs it (a Milvus Lite file serves one process at a time)."""
    return subprocess.run(
        [sys.executable, "-m", "qa.cli", "ask", question, "--store", str(store)], capture_output=True, text=True, env=ENV
    )
