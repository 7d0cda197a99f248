"""Long runs, shortened: bench/soak.py's loop (chat users, folder churn, a feed, SIGKILL and restart) for two minutes,
with nothing lost: no errors outside the restart, every citation held by its file when it was given, and the final
index equal to the folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_minutes_of_load_churn_and_a_kill_lose_nothing(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "bench/soak.py", "--minutes", "2", "--kill-every", "1", "--users", "4", "--stories", "40",
         "--work", str(tmp_path / "work"), "--output", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "soak-embedded.json").read_text(encoding="utf-8"))
    assert summary["kills"] == 1 and summary["answers"] > 0 and summary["errors"] == 0
    assert summary["citations_checked"] > 0 and summary["citations_bad"] == 0 and summary["index_equals_folder"]
