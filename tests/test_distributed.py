"""Builds on Ray: a local Ray instance's actors embed the same index as a plain build, and a killed one loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qa
from qa.distributed import RaySettings
from qa.evaluate import load_questions
from qa.retrieval import load_index

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

pytest.importorskip("ray", reason="builds on Ray need qa[ray], which make installs")

KILLED_AT = {"embedded": "qa.distributed: embedding", "milvus": "inserted 1000 rows"}
"""The log line at which the build is killed: once the actors are at work; once the first rows are in Milvus."""


def _citations(answer: qa.Answer) -> list[tuple[str, int, int]]:
    return [(c.path, c.start, c.end) for c in answer.citations]


@pytest.mark.parametrize("kind", STORES)
def test_a_ray_build_gives_the_same_index_and_answers_as_a_plain_build(tmp_path: Path, kind: str) -> None:
    plain, on_ray = str(tmp_path / "plain"), store_location(kind, tmp_path)
    qa.build_index(SEEDS, plain)
    report = qa.build_index(SEEDS, store=on_ray, ray=RaySettings(workers=2, articles_per_batch=1))
    assert report.added == 2 and report.chunks_embedded > 0

    expected, built = load_index(plain), load_index(on_ray)
    listed = [(a.path, a.title, a.chunks) for a in expected.reader.articles()]
    assert [(a.path, a.title, a.chunks) for a in built.reader.articles()] == listed
    ids = [[a.id for a in index.reader.articles()] for index in (expected, built)]
    chunks = [index.reader.chunks(articles=i) for index, i in zip((expected, built), ids)]
    assert np.allclose(chunks[0].vectors, chunks[1].vectors, atol=1e-5)
    sentences = [index.article_sentences(i) for index, i in zip((expected, built), ids)]
    assert sentences[0].text == sentences[1].text and np.array_equal(sentences[0].start, sentences[1].start)
    assert np.allclose(sentences[0].vectors, sentences[1].vectors, atol=1e-5)
    assert np.allclose(sentences[0].standalone, sentences[1].standalone, atol=1e-3)

    for question in load_questions(DEV):
        first, second = qa.answer(question.question, store=plain), qa.answer(question.question, store=on_ray)
        assert (second.text, _citations(second)) == (first.text, _citations(first)), question.question


@pytest.mark.parametrize("kind", STORES)
def test_a_killed_ray_build_leaves_the_old_index_answering(tmp_path: Path, kind: str) -> None:
    articles = copy_seeds(tmp_path / "articles")
    store = store_location(kind, tmp_path)
    qa.build_index(articles, store=store)
    before = ask_in_new_process(MEETING_QUESTION, store)
    assert before.returncode == 0 and "late 2024" in before.stdout
    add_budget_articles(articles)

    build = subprocess.Popen(
        [sys.executable, "-m", "qa.cli", "-v", "index", "--articles", str(articles), "--store", store,
         "--ray", "--ray-batch", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
    )
    logged = []
    for line in build.stderr:  # kill the driver (and the Ray instance and Milvus it started) mid-way
        logged.append(line)
        if KILLED_AT[kind] in line:
            break
    assert build.poll() is None, "the build finished before it could be killed:\n" + "".join(logged)
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()

    after = ask_in_new_process(MEETING_QUESTION, store)
    assert after.returncode == 0 and after.stdout == before.stdout
    assert "dredging" not in ask_in_new_process(BUDGET_QUESTION, store).stdout
    report = qa.build_index(articles, store=store, ray=RaySettings(workers=2))
    assert report.added == BUDGET_ARTICLES and report.unchanged == 2
    assert "dredging" in qa.answer(BUDGET_QUESTION, store=store).text
