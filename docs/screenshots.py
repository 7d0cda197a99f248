"""Make the README's screenshot of the Articles tab at collection size: `qa serve` on an indexed folder, one article open.

    .venv/bin/qa index --articles DIR --index INDEX            # e.g. the seeds, ../shared/corpora/bbc and tests/pages
    .venv/bin/python docs/screenshots.py --articles DIR --index INDEX
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "articles-bbc.png"
PORT = 7899
START_SECONDS = 180
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", required=True)
    parser.add_argument("--index", required=True)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "qa.cli", "serve", "--articles", args.articles, "--index", args.index,
               "--port", str(PORT), "--no-watch"]
    server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{PORT}/"
        _wait_until_up(url)
        _screenshot(url)
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(f"wrote {TARGET}")


def _wait_until_up(url: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"qa serve did not answer on {url}")


def _screenshot(url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Articles").click()
        page.wait_for_function("() => document.querySelector('#qa-page').innerText.includes('page 1 of')")
        page.click('#qa-articles [data-testid="cell-0-0"]')
        page.wait_for_function("() => !document.querySelector('#qa-library-article .qa-hint')")
        page.screenshot(path=str(TARGET), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
