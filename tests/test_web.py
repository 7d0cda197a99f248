"""The web chat end to end: `qa serve` on a temporary articles folder, driven by headless Chromium through Playwright."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qa.config import DEFAULT_MODEL
from qa.web.page import CONVERSATION_STORAGE_KEY

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
SCREENSHOT = ROOT / "docs" / "screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_SECONDS = 180
ANSWER_MS = 60_000
BUILD_MS = 180_000
VIEWPORT = {"width": 1400, "height": 900}

LIMA_QUESTION = "Where did the leaders of Japan, the United States and South Korea meet in November 2024?"
SEED_FILE = "000_e98aca2129206eb6.txt"
UNANSWERABLE = "Who won the 2022 FIFA World Cup?"
ABSTENTION = "The articles do not say"
EXAMPLE_START = "What do the articles say about"
PENDING_TEXTS = ["Searching the articles", "Loading content"]
KEPT_JS = "(key) => (localStorage.getItem(key) || '').length > 100"
"""Whether the browser has kept the conversation (it is written after the answer is shown)."""

FESTIVAL_NAME = "harbour festival notes.txt"
FESTIVAL_SAVED = "harbour_festival_notes.txt"
FESTIVAL_FACT = "The Quillon lantern regatta was won by the rowing club from Brevik Island"
FESTIVAL_QUESTION = "Which rowing club won the Quillon lantern regatta?"
FILLER_PARAGRAPHS = 60
XSS_FILE = "notice.md"
XSS_TITLE = '<img src=x onerror="window.__qa_xss = 1">Ferry notice <b>bold</b>'
XSS_SCRIPT = "<script>window.__qa_xss = 2</script>"
XSS_FACT = f"The Tarnholm ferry timetable changes on Monday {XSS_SCRIPT} according to the harbour master."
XSS_QUESTION = "When does the Tarnholm ferry timetable change?"
DISK_FILE = "orchard.txt"
DISK_FACT = "The Velmont orchard cooperative harvested nine hundred tonnes of plums this autumn."
DISK_QUESTION = "How many tonnes of plums did the Velmont orchard cooperative harvest?"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"the browser test needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)"
)
logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"qa serve exited with {server.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"qa serve did not answer on {url} within {SERVER_START_SECONDS} s:\n{log.read_text(errors='replace')}")


def _article(title: str, body: list[str]) -> str:
    return "\n\n".join([title, "March 3, 2025", *body]) + "\n"


def _festival_article() -> str:
    filler = [
        f"Stall {n} of the harbour market sold smoked fish, knitted hats and warm bread to visitors on day {n}."
        for n in range(1, FILLER_PARAGRAPHS + 1)
    ]
    return _article("Harbour festival closes with a lantern regatta", [*filler, f"{FESTIVAL_FACT}, the organisers said."])


@contextmanager
def _serving(work: Path, extra_env: dict[str, str] | None = None, serve_args: tuple[str, ...] = ("--no-watch",)
             ) -> Iterator[dict]:
    """A running `qa serve` on `work/articles` with a freshly built index (not watching the folder unless
    `serve_args` say otherwise); yields its URL and folders, and `restart()`, which stops it and starts it again on
    the same address."""
    articles, index, log = work / "articles", work / "index", work / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "QA_AUTH": "", **(extra_env or {})}
    cli = [sys.executable, "-m", "qa.cli"]
    subprocess.run([*cli, "index", "--articles", str(articles), "--index", str(index)], check=True, env=env, cwd=ROOT)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    servers: list[subprocess.Popen] = []

    def start() -> None:
        with log.open("a") as output:
            servers.append(subprocess.Popen(
                [*cli, "serve", "--articles", str(articles), "--index", str(index), "--port", str(port), *serve_args],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            ))
        _wait_until_up(url, servers[-1], log)

    def restart() -> None:
        _stop(servers[-1])
        start()

    try:
        start()
        yield {"url": url, "articles": articles, "work": work, "restart": restart}
    finally:
        _stop(servers[-1])
        logger.info("qa serve log:\n%s", log.read_text(errors="replace"))


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The chat on a copy of the seeds."""
    work = tmp_path_factory.mktemp("web")
    shutil.copytree(SEEDS, work / "articles")
    with _serving(work) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def _browser_tab(browser, site: dict):
    """A tab of its own (own storage) on the chat at `site`, collecting page errors as `tab.qa_errors`."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    tab.goto(site["url"], wait_until="domcontentloaded")
    tab.wait_for_selector("#qa-question textarea", timeout=ANSWER_MS)
    tab.qa_errors = errors
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="module")
def page(browser, site: dict):
    with _browser_tab(browser, site) as tab:
        yield tab


def _ask(page, question: str) -> str:
    """Ask in the chat and wait for the reply; returns the text of the last assistant message."""
    before = page.locator("#qa-chat .message.bot").count()
    page.fill("#qa-question textarea", question)
    page.click("#qa-ask")
    return _wait_for_reply(page, before)


def _wait_for_reply(page, before: int) -> str:
    """Wait until the chat shows a finished reply beyond the first `before`; returns its text."""
    page.wait_for_function(
        """([count, pending]) => {
            const bots = document.querySelectorAll('#qa-chat .message.bot');
            const text = bots.length > count ? bots[bots.length - 1].innerText.trim() : '';
            const tracker = document.querySelector('#qa-chat [data-testid="status-tracker"]');
            const busy = tracker && !tracker.classList.contains('hide');
            return text && !pending.some(word => text.includes(word)) && !busy;
        }""",
        arg=[before, PENDING_TEXTS],
        timeout=ANSWER_MS,
    )
    return page.locator("#qa-chat .message.bot").last.inner_text()


def _open_citation(page, containing: str) -> str:
    """Pick the citation whose quote contains `containing`; returns the highlighted passage once shown."""
    reply = page.locator("#qa-chat .message.bot").last.inner_text()
    blocks = [block for block in reply.split("[") if "]" in block]
    number = next(block.split("]")[0] for block in blocks if containing.lower() in block.lower())
    page.locator("#qa-citations label", has_text=f"[{number}]").click()
    mark = page.locator("#qa-article mark")
    mark.wait_for(timeout=ANSWER_MS)
    page.wait_for_function(
        "(text) => document.querySelector('#qa-article mark').innerText.toLowerCase().includes(text)",
        arg=containing.lower(),
        timeout=ANSWER_MS,
    )
    return mark.inner_text()


def _mark_is_in_view(page) -> bool:
    return page.evaluate(
        """() => {
            const box = document.querySelector('#qa-article .qa-article-text').getBoundingClientRect();
            const mark = document.querySelector('#qa-article mark').getBoundingClientRect();
            return mark.top >= box.top - 1 && mark.bottom <= box.bottom + 1 && mark.bottom <= window.innerHeight;
        }"""
    )


def _upload(page, files: list[Path]) -> str:
    """Upload files in the Articles tab and press 'Add to index'; returns the status message."""
    page.get_by_role("tab", name="Articles").click()
    page.locator("#qa-upload input[type=file]").set_input_files([str(path) for path in files])
    page.wait_for_function(
        "(n) => document.querySelectorAll('#qa-upload .file-preview tr, #qa-upload .file').length >= n",
        arg=len(files),
        timeout=ANSWER_MS,
    )
    return _press_and_wait(page, "#qa-add")


STATUS_TEXT_JS = "() => [...document.querySelectorAll('#qa-status li')].map(item => item.innerText).join('\\n')"


def _press_and_wait(page, button: str) -> str:
    """Press a button of the Articles tab; returns the new status message once it is shown."""
    before = page.evaluate(STATUS_TEXT_JS)
    page.click(button)
    page.wait_for_function(
        f"(before) => {{ const text = ({STATUS_TEXT_JS})(); return text && text !== before; }}",
        arg=before,
        timeout=BUILD_MS,
    )
    return page.evaluate(STATUS_TEXT_JS)


def _save_screenshot(page) -> None:
    """Save the answered chat, scrolled back to the question, as the README's screenshot."""
    page.evaluate("() => document.querySelectorAll('#qa-chat *').forEach(element => { element.scrollTop = 0; })")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))


def test_chat_end_to_end(page, site: dict, tmp_path: Path) -> None:
    example = page.locator("#qa-chat button", has_text=EXAMPLE_START).first
    example.click()
    _wait_for_reply(page, 0)
    assert page.locator("#qa-chat .message.user").first.inner_text().startswith(EXAMPLE_START)
    page.click("#qa-new-chat")
    page.wait_for_function("() => document.querySelectorAll('#qa-chat .message.bot').length === 0")

    reply = _ask(page, LIMA_QUESTION)
    assert "Lima" in reply and SEED_FILE in reply and "Trilateral Secretariat" in reply
    assert page.locator("#qa-citations label", has_text="[1]").count() == 1
    answered = page.locator("#qa-chat .message.bot").last
    short = answered.locator("p").first.locator("strong").first.inner_text()
    assert "Lima" in short and len(short.split()) <= 3, "the short answer comes first, in bold"
    assert answered.locator("strong", has_text=short).count() >= 2, "and is marked inside its quote"
    answered.locator("p").first.locator("a").click()
    marked = page.locator("#qa-article mark .qa-short")
    marked.wait_for(timeout=ANSWER_MS)
    assert marked.inner_text() == short, "and in the article view"
    passage = _open_citation(page, "Lima")
    source = (site["articles"] / SEED_FILE).read_text(encoding="utf-8")
    assert "Lima" in passage and " ".join(passage.split()) in " ".join(source.split())
    assert _mark_is_in_view(page)
    _save_screenshot(page)

    follow_up = _ask(page, "Who attended it?")
    assert "Shigeru Ishiba" in follow_up or "Joe Biden" in follow_up, follow_up

    abstention = _ask(page, UNANSWERABLE)
    assert ABSTENTION in abstention and "[1]" not in abstention
    assert page.locator("#qa-citations label").count() == 0

    page.wait_for_function("() => !document.querySelector('#qa-download').disabled")
    with page.expect_download() as download:
        page.click("#qa-download")
    exported = Path(download.value.path()).read_text(encoding="utf-8")
    assert download.value.suggested_filename.endswith(".md")
    assert f"## 1. {LIMA_QUESTION}" in exported and "## 3. " in exported and ABSTENTION in exported
    assert SEED_FILE in exported and "characters " in exported and "Trilateral Secretariat" in exported
    assert f"**{short}** [" in exported

    page.get_by_role("tab", name="Articles").click()
    index_state = page.locator("#qa-index-state").inner_text()
    assert DEFAULT_MODEL in index_state and "Articles: 2" in index_state
    assert SEED_FILE in page.locator("#qa-articles").inner_text()

    festival, notice = tmp_path / FESTIVAL_NAME, tmp_path / XSS_FILE
    festival.write_text(_festival_article(), encoding="utf-8")
    notice.write_text(_article(XSS_TITLE, [XSS_FACT]), encoding="utf-8")
    status = _upload(page, [festival, notice])
    assert "Index updated" in status and "2 added" in status, status
    assert (site["articles"] / FESTIVAL_SAVED).exists() and (site["articles"] / XSS_FILE).exists()
    table = page.locator("#qa-articles").inner_text()
    assert XSS_TITLE in table and FESTIVAL_SAVED in table, "titles are shown literally in the table"
    assert page.locator("#qa-articles img, #qa-articles b").count() == 0

    page.get_by_role("tab", name="Chat").click()
    reply = _ask(page, FESTIVAL_QUESTION)
    assert "Brevik Island" in reply and FESTIVAL_SAVED in reply
    assert "Brevik Island" in _open_citation(page, "Brevik Island")
    assert _mark_is_in_view(page), "the quote at the end of a long article is scrolled into view"

    reply = _ask(page, XSS_QUESTION + " <b>now</b>")
    assert XSS_SCRIPT in reply and "<b>now</b>" in page.locator("#qa-chat .message.user").last.inner_text()
    assert XSS_SCRIPT in _open_citation(page, "Tarnholm")
    assert XSS_TITLE in page.locator("#qa-article").inner_text()
    assert page.locator("#qa-chat script, #qa-chat img, #qa-article script, #qa-article img").count() == 0
    assert page.locator("#qa-chat b, #qa-article b").count() == 0
    assert page.evaluate("() => window.__qa_xss") is None, "no article or question text ran as code"

    binary, clash = tmp_path / "photo.txt", tmp_path / "upload" / FESTIVAL_SAVED
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00 not text")
    clash.parent.mkdir()
    clash.write_text("A different text under a name already taken.\n", encoding="utf-8")
    status = _upload(page, [binary, clash])
    assert "not a text file" in status and "already exists" in status, status
    assert "A different text" not in (site["articles"] / FESTIVAL_SAVED).read_text(encoding="utf-8")

    (site["articles"] / DISK_FILE).write_text(_article("Plum harvest", [DISK_FACT]), encoding="utf-8")
    status = _press_and_wait(page, "#qa-rebuild")
    assert "1 added" in status, status
    assert "Articles: 5" in page.locator("#qa-index-state").inner_text()
    page.get_by_role("tab", name="Chat").click()
    assert "nine hundred tonnes" in _ask(page, DISK_QUESTION), "the chat uses the rebuilt index without a restart"
    assert not page.qa_errors, page.qa_errors


BBC = ROOT.parent / "shared" / "corpora" / "bbc"
BBC_PER_CATEGORY = 60
BBC_CATEGORIES = ("business", "entertainment", "politics", "sport", "tech")
PAGES = ROOT / "tests" / "pages"
COLLECTION_SIZE = 2 + BBC_PER_CATEGORY * len(BBC_CATEGORIES) + 2
SCOPED_SCREENSHOT = ROOT / "docs" / "scoped-answer.png"
BUSINESS = "bbc/business"
BUSINESS_QUESTION = "How much did quarterly profits at TimeWarner jump?"
PAGE_FILE = "saved/tidal-barrier.html"
PAGE_QUESTION = "How much did the tidal barrier in Port Aldren cost?"
PAGE_FACT = "420 million euros"
PAGE_FURNITURE = ["Accept all", "Most read", "All rights reserved"]
OLDEST_FILE = "saved/rail-strike.htm"
SCOPED_ABSTENTION = "The articles in this scope do not say"
AFTER_THE_SEEDS = "2025-01-01"


def test_a_follow_up_after_the_server_restarted_is_read_against_the_conversation(browser, tmp_path: Path) -> None:
    shutil.copytree(SEEDS, tmp_path / "articles")
    with _serving(tmp_path) as served, _browser_tab(browser, served) as tab:
        assert "Lima" in _ask(tab, LIMA_QUESTION)
        tab.wait_for_function(KEPT_JS, arg=CONVERSATION_STORAGE_KEY, timeout=ANSWER_MS)
        served["restart"]()  # a new process: the sessions it held are gone, the browser keeps its copy
        tab.reload(wait_until="domcontentloaded")
        tab.wait_for_function("() => document.querySelectorAll('#qa-chat .message.bot').length === 1", timeout=ANSWER_MS)
        assert "Lima" in tab.locator("#qa-chat .message.bot").last.inner_text(), "the conversation is shown again"
        follow_up = _ask(tab, "Who attended it?")
        assert "Shigeru Ishiba" in follow_up or "Joe Biden" in follow_up, follow_up
        assert tab.locator("#qa-chat .message.bot").count() == 2


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The chat on the seeds, 300 BBC stories in their category folders and two saved news pages."""
    if not BBC.is_dir():
        pytest.skip(f"the collection test reads the BBC stories from {BBC}")
    work = tmp_path_factory.mktemp("collection")
    articles = work / "articles"
    shutil.copytree(SEEDS, articles)
    shutil.copytree(PAGES, articles / "saved")
    for category in BBC_CATEGORIES:
        target = articles / "bbc" / category
        target.mkdir(parents=True)
        for story in sorted((BBC / category).glob("*.txt"))[:BBC_PER_CATEGORY]:
            shutil.copy(story, target / story.name)
    with _serving(work) as served:
        yield served


def _page_line(page) -> str:
    return page.locator("#qa-page").inner_text()


def _search(page, words: str, expected: str) -> str:
    """Search the Articles tab; returns the line saying how many articles match, once it says `expected`."""
    page.fill("#qa-article-search input, #qa-article-search textarea", words)
    _page_line_says(page, expected)
    return _page_line(page)


def _page_line_says(page, text: str) -> None:
    page.wait_for_function(
        "(text) => document.querySelector('#qa-page').innerText.includes(text)", arg=text, timeout=ANSWER_MS
    )


def _table_files(page) -> list[str]:
    """The File column of the Articles table, top to bottom."""
    cells = page.evaluate(
        """() => [...document.querySelectorAll('#qa-articles [role=gridcell][data-col="2"]')]
            .map(cell => [Number(cell.dataset.row), cell.innerText.trim()])"""
    )
    return [text for _, text in sorted(cells)]


def _choose(page, dropdown: str, option: str) -> None:
    """Pick `option` in a Gradio dropdown."""
    page.click(f"{dropdown} input")
    page.fill(f"{dropdown} input", option)
    page.locator(f'{dropdown} [role=option][aria-label="{option}"]').click()


def _scope_line_says(page, text: str) -> None:
    page.wait_for_function(
        "(text) => document.querySelector('#qa-scope').innerText.includes(text)", arg=text, timeout=ANSWER_MS
    )


def _cited_files(page) -> list[str]:
    """The files of the last answer's citations, as the citation chooser lists them."""
    return [label.split(" · ")[-1].strip() for label in page.locator("#qa-citations label").all_inner_texts()]


def _save_page(page, path: Path) -> None:
    """Save the whole page, from its top, as one of the README's screenshots."""
    path.parent.mkdir(exist_ok=True)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)


def _click_citation_number(page, containing: str) -> str:
    """Click the number of the last answer's quote that contains `containing`; returns the highlighted passage."""
    reply = page.locator("#qa-chat .message.bot").last
    blocks = [block for block in reply.inner_text().split("[") if "]" in block]
    number = next(block.split("]")[0] for block in blocks if containing.lower() in block.lower())
    reply.locator(f'a[href$="-{number}"]').last.click()  # the quote's own number (a short answer links to it too)
    page.wait_for_function(
        "(text) => { const mark = document.querySelector('#qa-article mark');"
        " return mark && mark.innerText.toLowerCase().includes(text); }",
        arg=containing.lower(),
        timeout=ANSWER_MS,
    )
    return page.locator("#qa-article mark").inner_text()


def test_a_collection_in_the_chat(browser, collection: dict) -> None:
    with _browser_tab(browser, collection) as page:
        page.get_by_role("tab", name="Articles").click()
        _page_line_says(page, "page 1 of")
        assert f"Articles: {COLLECTION_SIZE}" in page.locator("#qa-index-state").inner_text()
        assert f"of {COLLECTION_SIZE}" in _page_line(page) and "page 1 of 13" in _page_line(page)
        page.click("#qa-next-page")
        _page_line_says(page, "page 2 of 13")

        _choose(page, "#qa-article-sort", "Oldest first")
        _page_line_says(page, "page 1 of 13")
        assert _table_files(page)[0] == OLDEST_FILE, "sorted by date, the oldest dated article comes first"

        found = _search(page, "port ALDREN", "matching")
        assert "of 1 matching" in found, found
        assert _table_files(page) == [PAGE_FILE], "found by words of its text, not only of its title"
        page.click('#qa-articles [data-testid="cell-0-0"]')
        page.wait_for_function(
            "(fact) => document.querySelector('#qa-library-article').innerText.includes(fact)", arg=PAGE_FACT
        )
        shown = page.locator("#qa-library-article").inner_text()
        assert not any(furniture in shown for furniture in PAGE_FURNITURE), "the page's extracted article is shown"

        doomed = f"{BUSINESS}/002.txt"
        _search(page, "", "page 1 of 13")
        _choose(page, "#qa-article-sort", "File")
        page.wait_for_function(
            "(file) => document.querySelector('#qa-articles [data-testid=\"cell-0-2\"]').innerText.trim() === file",
            arg=SEED_FILE,
        )
        doomed_cell = page.locator("#qa-articles [role=gridcell]", has_text=doomed).first
        doomed_cell.wait_for(timeout=ANSWER_MS)
        doomed_cell.click()
        page.wait_for_function(
            "(file) => document.querySelector('#qa-library-article .qa-article-head').innerText.includes(file)",
            arg=doomed,
        )
        page.click("#qa-delete")
        page.locator("#qa-delete-confirm").wait_for(timeout=ANSWER_MS)
        page.wait_for_function(
            "(file) => document.querySelector('#qa-delete-question').innerText.includes(file)", arg=doomed
        )
        page.click("#qa-delete-cancel")
        assert (collection["articles"] / doomed).exists(), "cancelling keeps the file"
        page.click("#qa-delete")
        status = _press_and_wait(page, "#qa-delete-confirm")
        assert f"Deleted {doomed}" in status and "1 removed" in status, status
        assert not (collection["articles"] / doomed).exists()
        assert f"Articles: {COLLECTION_SIZE - 1}" in page.locator("#qa-index-state").inner_text()

        page.get_by_role("tab", name="Chat").click()
        page.click("#qa-scope-controls button, #qa-scope-controls .label-wrap")
        _choose(page, "#qa-scope-folder", BUSINESS)
        _scope_line_says(page, f"the folder {BUSINESS}")
        reply = _ask(page, BUSINESS_QUESTION)
        assert "76%" in reply, reply
        files = _cited_files(page)
        assert files and all(file.startswith(BUSINESS + "/") for file in files), files
        page.locator("#qa-chat a[href$='-1']").last.click()
        page.locator("#qa-article mark").wait_for(timeout=ANSWER_MS)
        _save_page(page, SCOPED_SCREENSHOT)

        page.click("#qa-scope-clear")
        _scope_line_says(page, "all ")
        page.fill("#qa-scope-since input, #qa-scope-since textarea", AFTER_THE_SEEDS)
        _scope_line_says(page, f"dated from {AFTER_THE_SEEDS}")
        reply = _ask(page, LIMA_QUESTION)
        assert SCOPED_ABSTENTION in reply and "[1]" not in reply, reply

        page.click("#qa-scope-clear")
        _scope_line_says(page, "all ")
        reply = _ask(page, PAGE_QUESTION)
        assert PAGE_FACT in reply and PAGE_FILE in reply, reply
        passage = _click_citation_number(page, PAGE_FACT)
        assert PAGE_FACT in passage
        article = page.locator("#qa-article").inner_text()
        assert "Harbour city opens tidal barrier" in article
        assert not any(furniture in article for furniture in PAGE_FURNITURE), "the quote is shown in the extracted text"
        assert _mark_is_in_view(page)

        page.wait_for_function("() => !document.querySelector('#qa-download').disabled")
        with page.expect_download() as download:
            page.click("#qa-download")
        exported = Path(download.value.path()).read_text(encoding="utf-8")
        assert f"## 1. {BUSINESS_QUESTION}" in exported and f"## 3. {PAGE_QUESTION}" in exported
        assert SCOPED_ABSTENTION in exported and PAGE_FILE in exported and PAGE_FACT in exported

        page.reload(wait_until="domcontentloaded")
        page.wait_for_function("() => document.querySelectorAll('#qa-chat .message.bot').length === 3",
                               timeout=ANSWER_MS)
        assert PAGE_FACT in page.locator("#qa-chat .message.bot").last.inner_text(), "a reload keeps the conversation"
        assert PAGE_FACT in _click_citation_number(page, PAGE_FACT)
        assert not page.qa_errors, page.qa_errors
