"""Saved web pages: qa indexes the article trafilatura extracts from them, never their menus, lists or banners."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import qa

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
PAGES = ROOT / "tests" / "pages"
FURNITURE = [
    "cookies", "Accept all", "Most read", "Celebrity chef", "Ferry prices rise", "All rights reserved", "Privacy policy",
    "cookie policy", "Popular", "tram line", "Storm warning", "Football club", "Advertise", "Subscribe", "Weather",
]


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    articles = tmp_path_factory.mktemp("pages") / "articles"
    shutil.copytree(SEEDS, articles)
    shutil.copytree(PAGES, articles / "saved")
    index = str(articles.parent / "index")
    report = qa.build_index(articles, index)
    assert report.added == 4 and not report.skipped
    return {"articles": articles, "index": index}


@pytest.mark.parametrize(
    "question, page, expected, title, date",
    [
        ("How much did the tidal barrier in Port Aldren cost?", "tidal-barrier.html", "420 million euros",
         "Harbour city opens tidal barrier", "2025-03-14"),
        ("What pay offer did the rail union members accept?", "rail-strike.htm", "6.5 percent",
         "Rail workers end three-day strike", "2024-11-02"),
    ],
)
def test_a_saved_page_is_quoted_from_its_article_text_with_its_metadata(collection, question, page, expected, title, date):
    reply = qa.answer(question, index_dir=collection["index"])
    first = reply.citations[0]
    assert Path(first.path).name == page and expected in first.quote
    assert (first.title, first.date) == (title, date)
    for citation in reply.citations:
        assert qa.article_text(citation.path)[citation.start : citation.end] == citation.quote


def test_page_furniture_is_never_indexed_or_quoted(collection):
    for page in PAGES.iterdir():
        text = qa.article_text(page)
        assert not [word for word in FURNITURE if word in text], text
    for question in ["Which cookies does the site use?", "Who won the regional cup?", "What is on the most read list?"]:
        reply = qa.answer(question, index_dir=collection["index"])
        assert not [word for c in reply.citations for word in FURNITURE if word in c.quote]


def test_a_page_changed_since_indexing_is_not_quoted_until_reindexed(collection):
    page = collection["articles"] / "saved" / "tidal-barrier.html"
    question = "How much did the tidal barrier in Port Aldren cost?"
    original = page.read_text(encoding="utf-8")
    page.write_text(original.replace("420 million euros", "510 million euros"), encoding="utf-8")
    try:
        assert not any("million euros" in c.quote for c in qa.answer(question, index_dir=collection["index"]).citations)
        qa.build_index(collection["articles"], collection["index"])
        assert any("510 million euros" in c.quote for c in qa.answer(question, index_dir=collection["index"]).citations)
    finally:
        page.write_text(original, encoding="utf-8")
        qa.build_index(collection["articles"], collection["index"])
