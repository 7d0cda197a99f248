"""Builds on Ray: a local Ray instance's actors embed the same index as a plain build, and a killed one loses nothing."""

from __future__ import annotations

import os
import shutil
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

pytest.importorskip("ray", reason="builds on Ray need qa[ray], which make installs")

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
DEV = ROOT.parent / "shared" / "eval" / "dev.jsonl"
ENV = dict(os.environ, HF_HUB_OFFLINE="1")
MEETING_QUESTION = "When will the three countries meet to formally establish the secretariat?"


def _citations(answer: qa.Answer) -> list[tuple[str, int, int]]:
    return [(c.path, c.start, c.end) for c in answer.citations]


def test_a_ray_build_gives_the_same_index_and_answers_as_a_plain_build(tmp_path: Path) -> None:
    plain, on_ray = str(tmp_path / "plain"), str(tmp_path / "ray")
    qa.build_index(SEEDS, plain)
    report = qa.build_index(SEEDS, on_ray, ray=RaySettings(workers=2, articles_per_batch=1))
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


def test_a_killed_ray_build_leaves_the_old_index_answering(tmp_path: Path) -> None:
    articles = shutil.copytree(SEEDS, tmp_path / "articles")
    store = str(tmp_path / "index")
    qa.build_index(articles, store)
    before = qa.answer(MEETING_QUESTION, store=store)
    assert "late 2024" in before.text
    for number in range(30):
        text = " ".join(f"Clause {number}-{k} of the port budget funds dredging work number {k}." for k in range(40))
        (articles / f"budget_{number:02d}.txt").write_text(f"Port budget {number}\n\n{text}\n", encoding="utf-8")

    build = subprocess.Popen(
        [sys.executable, "-m", "qa.cli", "-v", "index", "--articles", str(articles), "--index", store, "--ray"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
    )
    for line in build.stderr:  # kill the driver (and the Ray instance it started) once the actors are at work
        if "qa.distributed: embedding" in line:
            break
    assert build.poll() is None, "the build finished before it could be killed"
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()

    after = subprocess.run([sys.executable, "-m", "qa.cli", "ask", MEETING_QUESTION, "--index", store],
                           capture_output=True, text=True, env=ENV)
    assert after.returncode == 0 and "late 2024" in after.stdout
    assert "dredging" not in qa.answer("What does the port budget fund?", store=store).text
    report = qa.build_index(articles, store, ray=RaySettings(workers=2))
    assert report.added == 30 and report.unchanged == 2
    assert "dredging" in qa.answer("What does the port budget fund?", store=store).text
