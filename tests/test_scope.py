"""Scoped questions: answers from a sub-folder, a date range or chosen articles only, on every store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import qa

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
PAGES = ROOT / "tests" / "pages"
MEETING_QUESTION = "When will the three countries meet to formally establish the secretariat?"
BARRIER_QUESTION = "How much did the tidal barrier in Port Aldren cost?"
SCOPED_ABSTENTION = "The articles in this scope do not say"


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def collection(request, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp(f"scope-{request.param}")
    articles = work / "articles"
    shutil.copytree(SEEDS, articles / "world")
    shutil.copytree(PAGES, articles / "saved")
    store = str(work / "index") if request.param == "embedded" else f"milvus:{work / 'index' / 'qa.db'}"
    qa.build_index(articles, store=store)
    return {"articles": articles, "store": store}


def test_a_folder_scope_quotes_only_that_folder(collection):
    everywhere = qa.answer(MEETING_QUESTION, store=collection["store"])
    assert any("world/" in c.path for c in everywhere.citations)
    scoped = qa.answer("What did the mayor say at the opening ceremony?", store=collection["store"], where={"folder": "saved"})
    assert scoped.citations and all("/saved/" in c.path for c in scoped.citations)
    elsewhere = qa.answer(MEETING_QUESTION, store=collection["store"], where={"folder": "saved/"})
    assert all("/saved/" in c.path for c in elsewhere.citations)


def test_a_date_range_without_the_answer_abstains_in_the_scope(collection):
    dated = qa.answer(BARRIER_QUESTION, store=collection["store"], where={"since": "2025-03-01", "until": "2025-03-31"})
    assert any("420 million euros" in c.quote for c in dated.citations)
    empty = qa.answer(BARRIER_QUESTION, store=collection["store"], where={"until": "2024-12-31"})
    assert empty.abstained and not empty.citations and empty.text.startswith(SCOPED_ABSTENTION)
    november = qa.answer(MEETING_QUESTION, store=collection["store"], where={"since": "2024-11-01", "until": "2024-11-30"})
    assert november.citations and all("/world/" in c.path or "rail-strike" in c.path for c in november.citations)


def test_chosen_articles_and_bad_scopes(collection):
    page = collection["articles"] / "saved" / "rail-strike.htm"
    chosen = qa.answer("What did the union leader say?", store=collection["store"], where={"articles": [str(page)]})
    assert chosen.citations and {Path(c.path).name for c in chosen.citations} == {"rail-strike.htm"}
    for where, message in [({"section": "x"}, "unknown scope key 'section'"), ({"since": "last March"}, "YYYY-MM-DD")]:
        with pytest.raises(ValueError, match=message):
            qa.answer(BARRIER_QUESTION, store=collection["store"], where=where)


def test_cli_scope_flags(collection):
    if collection["store"].startswith("milvus:"):
        pytest.skip("this process holds the Milvus Lite file (it serves one process); the flags are the same")
    run = subprocess.run(
        [sys.executable, "-m", "qa.cli", "ask", BARRIER_QUESTION, "--store", collection["store"], "--folder", "world"],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert run.returncode == 0 and "420 million" not in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "qa.cli", "ask", BARRIER_QUESTION, "--store", collection["store"], "--since", "soon"],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "YYYY-MM-DD" in bad.stderr
