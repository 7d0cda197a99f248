"""Every store answers alike: the same library tests against the embedded folder and Milvus (Lite, the real engine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import qa
import qa.store.embedded as embedded
from qa.evaluate import citation_is_intact, evaluate, load_questions

from common import (
    BUDGET_ARTICLES,
    BUDGET_QUESTION,
    DEV,
    ENV,
    MEETING_QUESTION,
    SEEDS,
    STORES,
    add_budget_articles,
    ask_in_new_process,
    copy_seeds,
    store_location,
)

HARBOUR_QUESTION = "Which harbour reopened after restoration?"


@pytest.mark.skipif(not DEV.exists(), reason="../shared/eval/dev.jsonl is not beside the repository")
@pytest.mark.parametrize("kind", STORES)
def test_dev_questions_all_hit_with_intact_citations(tmp_path, kind):
    store = store_location(kind, tmp_path)
    qa.build_index(SEEDS, store=store)
    report = evaluate(load_questions(DEV), store=store)
    assert report.overall.answerable_hits == report.overall.answerable == 9
    assert report.overall.abstention_hits == report.overall.unanswerable == 3
    assert report.citations > 0 and report.integrity == 1.0


@pytest.mark.parametrize("kind", [*STORES, "embedded-ivf"])
def test_incremental_rebuild_embeds_only_what_changed(tmp_path, monkeypatch, kind):
    if kind == "embedded-ivf":  # what folders of APPROXIMATE_SEARCH_FROM chunks and more use: IVF under stable ids
        monkeypatch.setattr(embedded, "APPROXIMATE_SEARCH_FROM", 1)
    articles, store = copy_seeds(tmp_path / "articles"), store_location(kind.split("-")[0], tmp_path)
    first = qa.build_index(articles, store=store)
    assert (first.added, first.updated, first.removed, first.unchanged) == (2, 0, 0, 0)

    again = qa.build_index(articles, store=store)
    assert (again.added, again.updated, again.removed, again.unchanged, again.chunks_embedded) == (0, 0, 0, 2, 0)

    (articles / "nested").mkdir()
    (articles / "nested" / "new.md").write_text(
        "# Harbour reopens\n\nThe old harbour of Port Mirelle reopened on Monday after a two-year restoration.\n",
        encoding="utf-8",
    )
    added = qa.build_index(articles, store=store)
    assert (added.added, added.unchanged) == (1, 2) and added.chunks_embedded == 1
    assert "Port Mirelle" in qa.answer(HARBOUR_QUESTION, store=store).text

    seed = articles / "001_e77a1c347891044f.txt"
    seed.write_text(seed.read_text(encoding="utf-8").replace("late 2024", "early 2025"), encoding="utf-8")
    changed = qa.build_index(articles, store=store)
    assert (changed.updated, changed.unchanged) == (1, 2)
    assert 0 < changed.chunks_embedded < first.chunks_embedded
    reply = qa.answer(MEETING_QUESTION, store=store)
    assert any("early 2025" in c.quote for c in reply.citations)
    assert not any("late 2024" in c.quote for c in reply.citations), "the old version of a changed article left"
    assert all(citation_is_intact(c) for c in reply.citations)

    (articles / "nested" / "new.md").unlink()
    removed = qa.build_index(articles, store=store)
    assert (removed.removed, removed.chunks_embedded) == (1, 0)
    assert not any("new.md" in c.path for c in qa.answer(HARBOUR_QUESTION, store=store).citations)
    summary = qa.describe_index(store=store)
    assert [a.path for a in summary.articles] == sorted(p.name for p in SEEDS.iterdir())
    assert summary.n_articles == 2 and summary.n_chunks == sum(a.chunks for a in summary.articles)
    if kind.startswith("embedded"):
        manifest = embedded.read_manifest(embedded.current_generation(tmp_path / "index"))
        assert (manifest["approximate"] is not None) == (kind == "embedded-ivf")


@pytest.mark.parametrize("moment", ["embedding", "writing"])
@pytest.mark.parametrize("kind", STORES)
def test_a_build_killed_mid_way_leaves_the_old_answers(tmp_path, kind, moment):
    articles, store = copy_seeds(tmp_path / "articles"), store_location(kind, tmp_path)
    qa.build_index(articles, store=store)
    before = ask_in_new_process(MEETING_QUESTION, store)
    assert before.returncode == 0 and "late 2024" in before.stdout
    add_budget_articles(articles)
    build = subprocess.Popen(
        [sys.executable, "-m", "qa.cli", "-v", "index", "--articles", str(articles), "--store", store],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
    )
    for line in build.stderr:  # the build logs each stage; kill it (and any engine it started) inside one
        if f"qa.index: {moment}" in line:
            break
    assert build.poll() is None, "the build finished before it could be killed"
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()

    after = ask_in_new_process(MEETING_QUESTION, store)
    assert after.returncode == 0 and after.stdout == before.stdout
    assert "dredging" not in ask_in_new_process(BUDGET_QUESTION, store).stdout
    report = qa.build_index(articles, store=store)
    assert report.added == BUDGET_ARTICLES and report.unchanged == 2
    assert "dredging" in qa.answer(BUDGET_QUESTION, store=store).text
    if kind == "embedded":
        assert not list((tmp_path / "index").glob("*.tmp")), "what the killed build left is cleared"


@pytest.mark.parametrize("kind", STORES)
def test_bad_input_is_refused_with_a_message_and_loses_nothing(tmp_path, kind):
    store = store_location(kind, tmp_path)
    with pytest.raises(FileNotFoundError, match="qa index"):
        qa.answer("Where did they meet?", store=store)
    articles = copy_seeds(tmp_path / "articles")
    qa.build_index(articles, store=store)
    for question, message in [(" ", "question is empty"), ("x" * 5000, "characters long"), ("Who\x07?", "control")]:
        with pytest.raises(ValueError, match=message):
            qa.answer(question, store=store)
    (tmp_path / "emptied").mkdir()
    with pytest.raises(ValueError, match="no article text to index"):
        qa.build_index(tmp_path / "emptied", store=store)
    reply = qa.answer(MEETING_QUESTION, store=store)
    assert any("late 2024" in c.quote for c in reply.citations) and all(citation_is_intact(c) for c in reply.citations)
    unreadable = subprocess.run(
        [sys.executable, "-m", "qa.cli", "ask", "Who met?", "--store", "milvus:"], capture_output=True, text=True, env=ENV
    )
    assert unreadable.returncode == 2 and len(unreadable.stderr.strip().splitlines()) == 1
    assert "milvus:" in unreadable.stderr
