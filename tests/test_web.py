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
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A running `qa serve` on a copy of the seeds with a freshly built index; yields its URL and folders."""
    work = tmp_path_factory.mktemp("web")
    articles, index, log = work / "articles", work / "index", work / "serve.log"
    shutil.copytree(SEEDS, articles)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "QA_AUTH": ""}
    cli = [sys.executable, "-m", "qa.cli"]
    subprocess.run([*cli, "index", "--articles", str(articles), "--index", str(index)], check=True, env=env, cwd=ROOT)
    port = _free_port()
    with log.open("w") as output:
        server = subprocess.Popen(
            [*cli, "serve", "--articles", str(articles), "--index", str(index), "--port", str(port), "--no-watch"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, server, log)
        yield {"url": url, "articles": articles, "work": work}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        logger.info("qa serve log:\n%s", log.read_text(errors="replace"))


@pytest.fixture(scope="module")
def page(site: dict):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        tab.goto(site["url"], wait_until="domcontentloaded")
        tab.wait_for_selector("#qa-question textarea", timeout=ANSWER_MS)
        tab.qa_errors = errors
        yield tab
        browser.close()


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

    page.get_by_role("tab", name="Articles").click()
    index_state = page.locator("#qa-index-state").inner_text()
    assert "all-MiniLM-L6-v2" in index_state and "Articles: 2" in index_state
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

    latin1, clash = tmp_path / "latin1.txt", tmp_path / "upload" / FESTIVAL_SAVED
    latin1.write_bytes("Caf\xe9 news from S\xe3o Paulo.\n".encode("latin-1"))
    clash.parent.mkdir()
    clash.write_text("A different text under a name already taken.\n", encoding="utf-8")
    status = _upload(page, [latin1, clash])
    assert "not UTF-8" in status and "already exists" in status, status
    assert "A different text" not in (site["articles"] / FESTIVAL_SAVED).read_text(encoding="utf-8")

    (site["articles"] / DISK_FILE).write_text(_article("Plum harvest", [DISK_FACT]), encoding="utf-8")
    status = _press_and_wait(page, "#qa-rebuild")
    assert "1 added" in status, status
    assert "Articles: 5" in page.locator("#qa-index-state").inner_text()
    page.get_by_role("tab", name="Chat").click()
    assert "nine hundred tonnes" in _ask(page, DISK_QUESTION), "the chat uses the rebuilt index without a restart"
    assert not page.qa_errors, page.qa_errors
