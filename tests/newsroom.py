"""A local news site for the tests: article pages, RSS 2.0 and Atom feeds (with ETags), a malformed feed, redirects,
an endless page and a page that never answers, served on 127.0.0.1; every request is logged."""

from __future__ import annotations

import hashlib
import html
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MEGABYTE = 1_000_000
HUGE_PAGE_MB = 50
SLOW_SECONDS = 4


@dataclass
class Story:
    slug: str
    title: str
    paragraphs: list[str]
    date: str = "2026-11-20"


def article_page(story: Story) -> str:
    """A news page as sites make them: menus, the article, a related-stories list and a footer."""
    body = "\n".join(f"<p>{html.escape(paragraph)}</p>" for paragraph in story.paragraphs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(story.title)} | Riverside Courier</title>
<meta property="og:title" content="{html.escape(story.title)}">
<meta name="date" content="{story.date}"></head>
<body><nav><a href="/">Home</a> <a href="/news">News</a> <a href="/sport">Sport</a> <a href="/weather">Weather</a></nav>
<main><article><h1>{html.escape(story.title)}</h1><p class="byline">By Dana Reyes, {story.date}</p>
{body}
</article></main>
<aside><h2>Most read</h2><ul><li><a href="/a">Celebrity chef opens bistro</a></li><li><a href="/b">Ferry prices rise</a></li>
<li><a href="/c">Storm warning for the coast</a></li></ul></aside>
<footer>© Riverside Courier. All rights reserved. <a href="/privacy">Privacy policy</a></footer></body></html>"""


def rss_feed(title: str, base: str, stories: list[Story]) -> str:
    items = "\n".join(
        f"<item><title>{html.escape(s.title)}</title><link>{base}/news/{s.slug}</link>"
        f"<guid>{base}/news/{s.slug}</guid><pubDate>Fri, 20 Nov 2026 08:00:00 GMT</pubDate></item>"
        for s in stories
    )
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel><title>{html.escape(title)}</title>'
            f"<link>{base}/</link><description>Local news</description>\n{items}\n</channel></rss>\n")


def atom_feed(title: str, base: str, stories: list[Story]) -> str:
    entries = "\n".join(
        f'<entry><title>{html.escape(s.title)}</title><link href="{base}/news/{s.slug}"/>'
        f"<id>tag:courier.test,2026:{s.slug}</id><updated>{s.date}T08:00:00Z</updated></entry>"
        for s in stories
    )
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>{html.escape(title)}</title><id>tag:courier.test,2026:feed</id>"
            f"<updated>2026-11-20T08:00:00Z</updated>\n{entries}\n</feed>\n")


MALFORMED_FEED = "<html><body><h1>502 Bad Gateway</h1><p>The feed is down for maintenance.</p>"


@dataclass
class Newsroom:
    """The site's content, changeable while it runs, and the requests it has had (path, If-None-Match)."""

    stories: dict[str, Story] = field(default_factory=dict)
    feeds: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    """path → (kind "rss" or "atom", slugs of its entries)"""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def paths_requested(self) -> list[str]:
        return [path for path, _ in self.requests]

    def feed_text(self, path: str) -> str:
        kind, slugs = self.feeds[path]
        render = rss_feed if kind == "rss" else atom_feed
        entries = [self.stories.get(slug) or Story(slug, f"Gone: {slug}", []) for slug in slugs]  # unknown: a 404
        return render(f"Riverside Courier {path}", self.base, entries)


def serve(newsroom: Newsroom) -> ThreadingHTTPServer:
    """Start serving `newsroom` on 127.0.0.1 in a thread; sets its port. Call `shutdown()` on the result to stop."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            newsroom.requests.append((self.path, self.headers.get("If-None-Match")))
            path = self.path.split("?")[0]
            if path in newsroom.feeds:
                self._feed(newsroom.feed_text(path))
            elif path.startswith("/news/") and path[len("/news/"):] in newsroom.stories:
                self._send(200, "text/html; charset=utf-8", article_page(newsroom.stories[path[len("/news/"):]]).encode())
            elif path == "/broken.xml":
                self._send(200, "application/rss+xml", MALFORMED_FEED.encode())
            elif path.startswith("/redirect/"):
                self.send_response(302)
                self.send_header("Location", path[len("/redirect"):].replace("/to/", "http://", 1))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/huge":
                self._huge()
            elif path == "/slow":
                time.sleep(SLOW_SECONDS)
                self._send(200, "text/html", article_page(next(iter(newsroom.stories.values()))).encode())
            elif path == "/data.json":
                self._send(200, "application/json", b'{"not": "a page"}')
            else:
                self._send(404, "text/plain", b"not found")

        def _feed(self, text: str) -> None:
            etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self._send(200, "application/rss+xml; charset=utf-8", text.encode(), {"ETag": etag,
                       "Last-Modified": formatdate(usegmt=True)})

        def _huge(self) -> None:
            """A 50 MB page, sent without a length, as a stream: the fetcher has to count."""
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            chunk = b"<p>" + b"filler " * (MEGABYTE // 7) + b"</p>"
            try:
                for _ in range(HUGE_PAGE_MB):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    newsroom.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
