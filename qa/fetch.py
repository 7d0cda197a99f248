"""Fetching: HTTP(S) downloads for pages and feeds, kept safe for a shared server: public addresses only (checked
after DNS and on every redirect), size, time and redirect limits, robots.txt and a polite delay per host."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from .articles import MAX_ARTICLE_BYTES

logger = logging.getLogger(__name__)

ALLOW_PRIVATE_ENV = "QA_FETCH_ALLOW_PRIVATE"
TIMEOUT_ENV = "QA_FETCH_TIMEOUT"
DELAY_ENV = "QA_FETCH_DELAY"
DEFAULT_TIMEOUT_S = 20.0
"""Longest wait for a connection or for the next bytes of a response."""
DEADLINE_FACTOR = 3
"""A whole download may take this many timeouts, so a server that trickles bytes cannot hold a fetch for ever."""
DEFAULT_DELAY_S = 1.0
"""Least time between two requests to one host (robots.txt's Crawl-delay, when longer, up to MAX_CRAWL_DELAY_S)."""
MAX_CRAWL_DELAY_S = 30.0
MAX_FETCH_BYTES = MAX_ARTICLE_BYTES
"""Largest page or feed fetched: the largest article qa reads."""
MAX_ROBOTS_BYTES = 500_000
ROBOTS_MAX_AGE_S = 24 * 3600.0
"""A host's robots.txt is read again after this long (a server following feeds runs for weeks)."""
MAX_REDIRECTS = 5
USER_AGENT = "qa-news-fetcher/0.1 (fetches pages and feeds its user asked for into an offline news collection)"
ROBOTS_AGENT = "qa-news-fetcher"
SCHEMES = ("http", "https")
HTML_TYPES = ("text/html", "application/xhtml+xml")
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Answers after which the same request may succeed later."""


class FetchError(ValueError):
    """A fetch that failed or was refused, with a one-line reason, the HTTP status when the server gave one, and
    whether trying again later may succeed (a timeout, a lost connection, a server error)."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


@dataclass(frozen=True)
class Fetched:
    """A response: the URL it came from after redirects, its status (200, or 304 when a conditional request found
    nothing new), its body and the validators for the next conditional request."""

    url: str
    status: int
    content: bytes
    content_type: str
    etag: str | None = None
    last_modified: str | None = None

    @property
    def unchanged(self) -> bool:
        return self.status == httpx.codes.NOT_MODIFIED

    @property
    def media_type(self) -> str:
        """The content type without its parameters, in lower case ("text/html"); empty when the server gave none."""
        return self.content_type.split(";")[0].strip().lower()

    @property
    def is_html(self) -> bool:
        return self.media_type in HTML_TYPES


def private_addresses_allowed() -> bool | frozenset[str]:
    """Whether fetches may go to loopback, private, link-local and other non-public addresses: $QA_FETCH_ALLOW_PRIVATE
    set to 1 allows any host to be at one; set to host names (comma-separated), only those hosts."""
    value = os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    return frozenset(host.strip() for host in value.split(",") if host.strip())


def check_url(url: str) -> str:
    """`url` without surrounding space if it is an http(s) URL with a host; raises FetchError saying what is wrong."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise FetchError(f"{url!r} is not a web address: give one that starts with http:// or https://")
    return url


def borrowed(fetcher: Fetcher | None):
    """A context giving `fetcher`, left open for its owner, or a new Fetcher closed at the end."""
    return contextlib.nullcontext(fetcher) if fetcher is not None else Fetcher()


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        raise FetchError(f"${name} must be a number of seconds, not {value!r}") from None


class Fetcher:
    """An HTTP client for a series of fetches. It remembers each host's robots.txt and when it last asked the host,
    so that hosts are asked politely. Safe to share between threads (requests to one host wait for each other)."""

    def __init__(self, allow_private: bool | frozenset[str] | None = None, timeout: float | None = None,
                 delay: float | None = None, max_bytes: int = MAX_FETCH_BYTES):
        self.allow_private = private_addresses_allowed() if allow_private is None else allow_private
        self.timeout = _float_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S) if timeout is None else timeout
        self.delay = _float_env(DELAY_ENV, DEFAULT_DELAY_S) if delay is None else delay
        self.max_bytes = max_bytes
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout), follow_redirects=False, trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )
        self._lock = threading.Lock()
        self._robots: dict[str, tuple[float, object | None]] = {}
        self._last_request: dict[str, float] = {}

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get(self, url: str, etag: str | None = None, last_modified: str | None = None) -> Fetched:
        """GET `url` (following at most MAX_REDIRECTS redirects, each checked like the first), with conditional
        headers when validators are given; raises FetchError with a one-line reason."""
        asked = url = check_url(url)
        headers = {key: value for key, value in (("If-None-Match", etag), ("If-Modified-Since", last_modified)) if value}
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self._check_address(url)
                self._check_robots(url)
                fetched, location = self._request(url, headers, self.max_bytes)
                if location is None:
                    return fetched
                url = check_url(urljoin(url, location))
            except FetchError as error:
                if url == asked:
                    raise
                raise FetchError(f"{asked}: redirected to {url}: {error}", error.status, error.transient) from None
            logger.info("redirected to %s", url)
        raise FetchError(f"{asked}: more than {MAX_REDIRECTS} redirects")

    def _request(self, url: str, headers: dict[str, str], max_bytes: int) -> tuple[Fetched, str | None]:
        """One request: the response, or the redirect's target."""
        self._wait_turn(urlsplit(url).netloc.lower())
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self._check_peer(response, url)
                if response.status_code == httpx.codes.NOT_MODIFIED:
                    return self._fetched(url, response, b""), None
                if response.is_redirect:
                    return Fetched(url, response.status_code, b"", ""), response.headers["location"]
                if response.status_code >= 400:
                    raise FetchError(f"{url}: the server answered {response.status_code} {response.reason_phrase}",
                                     response.status_code, transient=response.status_code in RETRY_STATUSES)
                return self._fetched(url, response, self._body(response, url, max_bytes)), None
        except httpx.TimeoutException:
            raise FetchError(f"{url}: no answer within {self.timeout:g} s; try again later", transient=True) from None
        except httpx.HTTPError as error:
            raise FetchError(f"{url}: {error or type(error).__name__}", transient=True) from None

    def _body(self, response: httpx.Response, url: str, max_bytes: int) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"{url}: larger than {max_bytes / 1e6:g} MB ({int(declared) / 1e6:.1f} MB); not fetched")
        deadline = time.monotonic() + DEADLINE_FACTOR * self.timeout
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"{url}: larger than {max_bytes / 1e6:g} MB; not fetched")
            if time.monotonic() > deadline:
                raise FetchError(f"{url}: took longer than {DEADLINE_FACTOR * self.timeout:g} s; try again later",
                                 transient=True)
        return bytes(body)

    @staticmethod
    def _fetched(url: str, response: httpx.Response, content: bytes) -> Fetched:
        return Fetched(url, response.status_code, content, response.headers.get("content-type", ""),
                       response.headers.get("etag"), response.headers.get("last-modified"))

    def _may_be_private(self, host: str) -> bool:
        allowed = self.allow_private
        return allowed is True or (isinstance(allowed, frozenset) and host.lower() in allowed)

    def _check_address(self, url: str) -> None:
        """Refuse a URL whose host resolves to any non-public address (unless allowed)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        if self._may_be_private(host):
            return
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        except socket.gaierror as error:
            raise FetchError(f"cannot find the host {host}: {error.strerror}") from None
        for address in sorted(addresses):
            _check_public(host, address)

    def _check_peer(self, response: httpx.Response, url: str) -> None:
        """Refuse a response from a non-public address: the address actually connected to, after any DNS change."""
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        host = urlsplit(url).hostname or ""
        if peer and not self._may_be_private(host):
            _check_public(host, str(peer[0]))

    def _check_robots(self, url: str) -> None:
        parts = urlsplit(url)
        rules = self._robots_of(parts.scheme, parts.netloc.lower())
        if rules is not None and not rules.can_fetch(url, ROBOTS_AGENT):
            raise FetchError(f"{url}: the site's robots.txt asks robots not to fetch it")

    def _robots_of(self, scheme: str, host: str):
        """The host's robots.txt rules (None: everything allowed), fetched once per host. As RFC 9309 says, a
        missing robots.txt allows everything, and one the server fails to give forbids everything."""
        key = f"{scheme}://{host}"
        if key in self._robots and time.monotonic() - self._robots[key][0] < ROBOTS_MAX_AGE_S:
            return self._robots[key][1]
        from protego import Protego

        try:
            self._check_address(f"{key}/robots.txt")
            fetched, location = self._request(f"{key}/robots.txt", {}, MAX_ROBOTS_BYTES)
            rules = None if location is not None else Protego.parse(fetched.content.decode("utf-8", "replace"))
        except FetchError as error:
            if error.status is not None and error.status < httpx.codes.INTERNAL_SERVER_ERROR:
                rules = None
            else:
                logger.warning("robots.txt of %s cannot be read (%s): not fetching from it", host, error)
                rules = Protego.parse("User-agent: *\nDisallow: /\n")
        self._robots[key] = (time.monotonic(), rules)
        return rules

    def _wait_turn(self, host: str) -> None:
        """Sleep until this host may be asked again."""
        known = self._robots.get(f"https://{host}") or self._robots.get(f"http://{host}")
        rules = known[1] if known else None
        crawl_delay = rules.crawl_delay(ROBOTS_AGENT) if rules is not None else None
        gap = max(self.delay, min(float(crawl_delay or 0), MAX_CRAWL_DELAY_S))
        with self._lock:
            wait = self._last_request.get(host, -gap) + gap - time.monotonic()
            self._last_request[host] = time.monotonic() + max(wait, 0.0)
        if wait > 0:
            time.sleep(wait)


def _check_public(host: str, address: str) -> None:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        raise FetchError(
            f"{host} is at {ip}, a private, local or reserved address: refused. Set {ALLOW_PRIVATE_ENV}=1 "
            f"(or --allow-private-addresses) to fetch from your own network"
        )
