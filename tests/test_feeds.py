"""Keeping the collection fed: `qa add URL`, `qa feeds`, and `qa serve` following feeds by itself, against a local news
site (tests/newsroom.py); pages are then quoted with their URLs, and unsafe or bad fetches change nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from newsroom import HUGE_PAGE_MB, Newsroom, Story, serve
from test_watch import _answer_within
from test_web import BUILD_MS, _browser_tab, _press_and_wait, _serving, browser  # noqa: F401  (a fixture)

import qa
from qa.cli import main
from qa.feeds import FEEDS_FILE
from qa.fetch import ALLOW_PRIVATE_ENV, DELAY_ENV, TIMEOUT_ENV

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
FOLLOW_SECONDS = 120
"""How long `qa serve` may take to fetch, index and quote a new feed entry (its feeds are updated every 3 s here)."""

STORIES = [
    Story("bridge", "Old Mill bridge reopens after repairs", [
        "The Old Mill bridge in Riverside reopened on Thursday after eight months of repairs that cost 3.2 million "
        "pounds.", "Engineers replaced the steel cables and resurfaced the deck, the council said."]),
    Story("library", "Central library extends its opening hours", [
        "The Riverside central library will stay open until nine in the evening on weekdays from January.",
        "The change follows a petition signed by four thousand residents, the head librarian said."]),
    Story("ferry", "Ferry strike called off after pay deal", [
        "Ferry workers on the Riverside crossing called off a two-day strike after accepting a pay rise of 5 percent.",
        "Services will run to the normal timetable from Monday, the operator said."]),
    Story("orchard", "Orchard cooperative reports record plum harvest", [
        "The Velmont orchard cooperative harvested nine hundred tonnes of plums this autumn, a record for the valley.",
        "Members credited the mild spring and new netting against birds."]),
    Story("tram", "Tram line to the docks approved", [
        "The city council approved a new tram line to the Riverside docks, to be built by 2029 at a cost of "
        "85 million pounds.", "Construction of the line is to start next spring."]),
]
QUESTIONS = {
    "bridge": ("How much did the repairs to the Old Mill bridge cost?", "3.2 million pounds"),
    "library": ("How late will the Riverside central library stay open on weekdays?", "nine in the evening"),
    "ferry": ("What pay rise did the Riverside ferry workers accept?", "5 percent"),
    "orchard": ("How many tonnes of plums did the Velmont orchard cooperative harvest?", "nine hundred tonnes"),
    "tram": ("When will the tram line to the Riverside docks be built?", "2029"),
}


@pytest.fixture(scope="module")
def newsroom():
    site = Newsroom(stories={story.slug: story for story in STORIES})
    site.feeds["/news.rss"] = ("rss", ["bridge", "library", "ferry"])
    site.feeds["/latest.atom"] = ("atom", ["orchard"])
    server = serve(site)
    yield site
    server.shutdown()


@pytest.fixture
def articles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the seeds; fetches may go to the local site and need not wait between requests."""
    folder = tmp_path / "articles"
    shutil.copytree(SEEDS, folder)
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    monkeypatch.setenv(DELAY_ENV, "0")
    return folder


def _qa(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under the folder (qa's own records too), with its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def _quoted(index: Path, slug: str) -> qa.Citation:
    question, expected = QUESTIONS[slug]
    reply = qa.answer(question, store=str(index))
    assert not reply.abstained, reply.text
    assert expected in reply.citations[0].quote, reply.text
    return reply.citations[0]


def test_a_page_added_by_url_is_quoted_with_its_url(newsroom: Newsroom, articles: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_PRIVATE_ENV)
    url = newsroom.url("/news/tram")
    code, out, _ = _qa(capsys, "add", url, "--articles", str(articles), "--allow-private-addresses")
    assert code == 0 and "added tram-line-to-the-docks-approved.html" in out
    saved = articles / "tram-line-to-the-docks-approved.html"
    assert saved.read_bytes().startswith(f"<!-- saved from url=({len(url):04d}){url} -->".encode())
    assert "Most read" not in qa.article_text(saved) and "Celebrity chef" not in qa.article_text(saved)

    code, out, _ = _qa(capsys, "add", url, "--articles", str(articles))
    assert code == 0 and "already in the collection (same URL)" in out
    code, out, _ = _qa(capsys, "add", url + "?utm_source=newsletter", "--articles", str(articles))
    assert code == 0 and "already in the collection (same text)" in out
    assert len(list(articles.glob("*.html"))) == 1

    index = tmp_path / "index"
    qa.build_index(articles, str(index))
    citation = _quoted(index, "tram")
    assert citation.path.endswith("tram-line-to-the-docks-approved.html") and citation.url == url
    code, out, _ = _qa(capsys, "ask", QUESTIONS["tram"][0], "--index", str(index))
    assert code == 0 and url in out


def test_feeds_bring_their_entries_and_only_new_ones(newsroom: Newsroom, articles: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    feed_url = newsroom.url("/news.rss")
    code, out, _ = _qa(capsys, "feeds", "add", feed_url, "--articles", str(articles))
    assert code == 0 and "3 new pages" in out, out
    code, out, _ = _qa(capsys, "feeds", "add", newsroom.url("/latest.atom"), "--articles", str(articles))
    assert code == 0 and "1 new page" in out, out
    assert feed_url in (articles / FEEDS_FILE).read_text(encoding="utf-8")
    index = tmp_path / "index"
    qa.build_index(articles, str(index))
    for slug in ("bridge", "library", "ferry", "orchard"):
        citation = _quoted(index, slug)
        assert citation.path.startswith(str(articles / "feeds")) and citation.url == newsroom.url(f"/news/{slug}")

    newsroom.feeds["/news.rss"] = ("rss", ["bridge", "library", "ferry", "tram"])
    newsroom.requests.clear()
    code, out, _ = _qa(capsys, "feeds", "update", "--articles", str(articles))
    assert code == 0 and "1 new page" in out and "unchanged" in out, out
    assert [path for path in newsroom.paths_requested() if path.startswith("/news/")] == ["/news/tram"]
    qa.build_index(articles, str(index))
    assert _quoted(index, "tram").url == newsroom.url("/news/tram")

    before = _files(articles)
    newsroom.requests.clear()
    code, out, _ = _qa(capsys, "feeds", "update", "--articles", str(articles))
    assert code == 0 and out.count("unchanged") == 2, out
    feed_requests = [(path, etag) for path, etag in newsroom.requests if path != "/robots.txt"]
    assert sorted(path for path, _ in feed_requests) == ["/latest.atom", "/news.rss"]
    assert all(etag for _, etag in feed_requests)
    assert {path: size for path, (size, _) in _files(articles).items() if not path.startswith(".qa/")} == {
        path: size for path, (size, _) in before.items() if not path.startswith(".qa/")}
    assert {path: when for path, (_, when) in _files(articles).items() if not path.startswith(".qa/")} == {
        path: when for path, (_, when) in before.items() if not path.startswith(".qa/")}

    code, out, _ = _qa(capsys, "feeds", "list", "--articles", str(articles))
    assert "Riverside Courier /news.rss" in out and "4 pages" in out
    code, out, _ = _qa(capsys, "feeds", "remove", feed_url, "--articles", str(articles))
    assert code == 0 and feed_url not in (articles / FEEDS_FILE).read_text(encoding="utf-8")
    assert len(list((articles / "feeds").rglob("*.html"))) == 5


def test_bad_fetches_say_why_and_change_nothing(newsroom: Newsroom, articles: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture, monkeypatch) -> None:
    index = tmp_path / "index"
    qa.build_index(articles, str(index))
    before = _files(articles)

    code, _, err = _qa(capsys, "feeds", "add", newsroom.url("/broken.xml"), "--articles", str(articles))
    assert code == 2 and "not a readable RSS or Atom feed" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _qa(capsys, "add", newsroom.url("/huge"), "--articles", str(articles))
    assert code == 2 and "larger than 5 MB" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _qa(capsys, "add", newsroom.url("/data.json"), "--articles", str(articles))
    assert code == 2 and "not a web page" in err
    code, _, err = _qa(capsys, "add", "file:///etc/passwd", "--articles", str(articles))
    assert code == 2 and "http:// or https://" in err
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    code, _, err = _qa(capsys, "add", newsroom.url("/slow"), "--articles", str(articles))
    assert code == 2 and "no answer within 1 s" in err and len(err.strip().splitlines()) == 1, err

    assert not (articles / FEEDS_FILE).exists()
    assert {p for p in _files(articles) if not p.startswith(".qa/")} == {p for p in before if not p.startswith(".qa/")}
    reply = qa.answer("Where did the leaders of Japan, the United States and South Korea meet in November 2024?",
                      store=str(index))
    assert "Lima" in reply.text
    assert HUGE_PAGE_MB * 1_000_000 > 5_000_000


def test_an_entry_whose_page_is_gone_is_reported_once(newsroom: Newsroom, articles: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    newsroom.feeds["/gone.rss"] = ("rss", ["ferry", "withdrawn-story"])
    code, out, _ = _qa(capsys, "feeds", "add", newsroom.url("/gone.rss"), "--articles", str(articles))
    assert code == 2 and "1 new page" in out and "1 failed" in out and "404" in out, out
    code, out, _ = _qa(capsys, "feeds", "list", "--articles", str(articles))
    assert "404" in out
    newsroom.requests.clear()
    code, out, _ = _qa(capsys, "feeds", "update", "--articles", str(articles))
    assert code == 0 and "unchanged" in out, out
    assert "/news/withdrawn-story" not in newsroom.paths_requested()


def test_local_addresses_are_refused_without_the_setting(newsroom: Newsroom, articles: Path,
                                                         capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_PRIVATE_ENV)
    newsroom.requests.clear()
    code, _, err = _qa(capsys, "add", newsroom.url("/news/bridge"), "--articles", str(articles))
    assert code == 2 and "private, local or reserved address" in err and ALLOW_PRIVATE_ENV in err
    assert newsroom.requests == []

    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "localhost")
    allowed = f"http://localhost:{newsroom.port}"
    code, out, _ = _qa(capsys, "add", f"{allowed}/news/library", "--articles", str(articles))
    assert code == 0 and "added" in out
    newsroom.requests.clear()
    code, _, err = _qa(capsys, "add", f"{allowed}/redirect/to/127.0.0.1:{newsroom.port}/news/ferry",
                       "--articles", str(articles))
    assert code == 2 and "redirected to http://127.0.0.1" in err and "private, local or reserved address" in err
    assert "/news/ferry" not in newsroom.paths_requested()
    assert not list(articles.glob("ferry*"))


def test_serve_follows_feeds_by_itself(newsroom: Newsroom, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch) -> None:
    from gradio_client import Client

    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    monkeypatch.setenv(DELAY_ENV, "0")
    newsroom.feeds["/served.rss"] = ("rss", ["bridge"])
    shutil.copytree(SEEDS, tmp_path / "articles")
    assert _qa(capsys, "feeds", "add", newsroom.url("/served.rss"), "--articles", str(tmp_path / "articles"))[0] == 0
    with _serving(tmp_path, serve_args=("--feeds-every", "0.05")) as site:
        newsroom.feeds["/served.rss"] = ("rss", ["bridge", "orchard"])
        client = Client(site["url"], verbose=False)
        question, expected = QUESTIONS["orchard"]
        reply = _answer_within(client, question, expected, FOLLOW_SECONDS)
        assert expected in reply, f"not quoted within {FOLLOW_SECONDS} s: {reply}"
        assert "open the original" in reply and newsroom.url("/news/orchard") in reply, reply


def test_the_articles_tab_adds_a_feed_and_shows_its_state(browser, newsroom: Newsroom, tmp_path: Path) -> None:
    newsroom.feeds["/tab.atom"] = ("atom", ["bridge", "library", "ferry"])
    shutil.copytree(SEEDS, tmp_path / "articles")
    with _serving(tmp_path, {ALLOW_PRIVATE_ENV: "1", DELAY_ENV: "0"}) as site, _browser_tab(browser, site) as tab:
        tab.get_by_role("tab", name="Articles").click()
        tab.locator("#qa-source-url textarea").fill(newsroom.url("/broken.xml"))
        status = _press_and_wait(tab, "#qa-fetch")
        assert "Nothing added" in status and "not a readable RSS or Atom feed" in status, status

        tab.locator("#qa-source-url textarea").fill(newsroom.url("/tab.atom"))
        status = _press_and_wait(tab, "#qa-fetch")
        assert "Following the feed" in status and "3 new pages" in status and "3 added" in status, status
        tab.wait_for_function(
            "() => { const t = document.querySelector('#qa-feeds')?.innerText || ''; "
            "return t.includes('Riverside Courier /tab.atom') && t.includes('feeds/127-0-0-1-tab-atom'); }",
            timeout=BUILD_MS,
        )
        feeds_text = tab.locator("#qa-feeds").inner_text()
        assert "never" not in feeds_text and "UTC" in feeds_text
        assert "ferry-strike-called-off-after-pay-deal.html" in tab.locator("#qa-articles").inner_text()
        assert not tab.qa_errors, tab.qa_errors
