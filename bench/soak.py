"""Soak: `qa serve` for --minutes under chat load, folder churn, feed updates and SIGKILLs, with nothing lost and
nothing growing.

The articles folder starts with the seeds and --stories BBC stories. Every few seconds a few files are added (the
rest of BBC, saved pages), changed or deleted, and a local feed gains an entry now and then. --users chat users ask
through the real server (gradio_client), each a title question and then a follow-up. Every --kill-every minutes the
server and any engine it started get SIGKILL and it is started again. Each minute it records answers, errors,
p50/p95, the server's RSS (with its child processes, e.g. Milvus Lite), open files, temporary files, the index's size
on disk and the generations kept. At the end every citation is checked against the file as it was when the answer
was given, and the final index against the folder. Figures go to bench/results/soak-<store>.json and, with
matplotlib, a plot to docs/soak-<store>.png. Exits 1 when a check fails.

    .venv/bin/python bench/soak.py                                     # 60 minutes on the embedded store
    .venv/bin/python bench/soak.py --store milvus                      # the same on a Milvus Lite file
    .venv/bin/python bench/soak.py --minutes 2 --kill-every 1 --users 4 --stories 40   # the short run of make test
"""

from __future__ import annotations

import argparse
import html
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from newsroom import Newsroom, Story, serve as serve_newsroom  # noqa: E402  (the tests' local news site)
from processes import cmdline, process_tree, rss_kb  # noqa: E402

import qa  # noqa: E402
from qa.articles import article_text, find_article_files, text_of  # noqa: E402

BBC = ROOT.parent / "shared" / "corpora" / "bbc"
PAGES = ROOT / "tests" / "pages"
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
STARTUP_SECONDS = 600
KILL_GRACE_SECONDS = 90
"""Errors within this long after a kill are the restart's, not failures."""
WARM_UP_MINUTES = 3
"""A server's first minutes (loading, catching up with the folder) are left out when its own growth is measured."""
CHURN_SECONDS = 4.0
FEED_EVERY_CHURNS = 8
SETTLE_SECONDS = 180
FOLLOW_UP = "Who said so?"
STREAM_END_SECONDS = 1.0
CONVERSATIONS_PER_SESSION = 5
"""A user leaves after this many conversations and another opens the page: a new browser session."""
_CITATION = re.compile(r"\[\*\*\\\[(\d+)\\\]\*\*\]\(#qa-cite-[\d-]+\) (.*?)  \n\*(.*?)\*(?:\n|$)", re.S)
_ESCAPE = re.compile(r"\\(.)")
_SPACE = re.compile(r"\s+")


@dataclass
class Asked:
    """One question through the server: when, how long, and what came back."""

    started: float
    ended: float
    ok: bool
    error: str = ""
    citations: list[tuple[str, str]] = field(default_factory=list)
    """(path relative to the articles folder, quote) as the chat showed them."""


@dataclass
class Minute:
    minute: int
    answers: int
    errors: int
    restart_errors: int
    p50_ms: float
    p95_ms: float
    rss_mb: float
    server_rss_mb: float
    worker_rss_mb: float
    milvus_rss_mb: float
    open_files: int
    temporary_files: int
    index_mb: float
    generations: int


class Versions:
    """Every version of every article file the soak wrote, with the time it took effect, for checking quotes
    against the file as it was when an answer was given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.history: dict[str, list[tuple[float, str | None]]] = {}

    def record(self, relative: str, text: str | None, at: float | None = None) -> None:
        with self.lock:
            self.history.setdefault(relative, []).append((time.monotonic() if at is None else at, text))

    def texts_between(self, relative: str, start: float, end: float) -> list[str] | None:
        """The texts the file had at any time in [start, end]; None for files the soak did not write."""
        with self.lock:
            versions = self.history.get(relative)
        if versions is None:
            return None
        found = []
        for number, (since, text) in enumerate(versions):
            until = versions[number + 1][0] if number + 1 < len(versions) else float("inf")
            if since <= end and until >= start and text is not None:
                found.append(text)
        return found


class Server:
    """`qa serve` in its own process group, started again after each kill."""

    def __init__(self, articles: Path, store: str, work: Path, port: int):
        self.articles, self.store, self.work, self.port = articles, store, work, port
        self.process: subprocess.Popen | None = None
        self.kills: list[float] = []
        self.log = (work / "serve.log").open("a")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "QA_AUTH": "",
               "QA_FETCH_ALLOW_PRIVATE": "1", "QA_FETCH_DELAY": "0", "TMPDIR": str(self.work / "tmp"),
               "GRADIO_TEMP_DIR": str(self.work / "gradio")}
        location = ["--store", self.store] if self.store.startswith("milvus:") else ["--index", self.store]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qa.cli", "serve", "--articles", str(self.articles), *location,
             "--port", str(self.port), "--feeds-every", "0.5"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )

    def kill(self) -> None:
        self.kills.append(time.monotonic())
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def memory(self) -> dict[str, float]:
        """Resident memory of the server process, of its build worker, of Milvus Lite (both run as its descendants),
        and of all of them together."""
        tree = process_tree(self.process.pid)
        worker = [pid for pid in tree if b"spawn_main" in cmdline(pid)]
        milvus = [pid for pid in tree[1:] if b"milvus" in cmdline(pid)]
        return {
            "rss_mb": sum(map(rss_kb, tree)) / 1024, "server_rss_mb": rss_kb(self.process.pid) / 1024,
            "worker_rss_mb": sum(map(rss_kb, worker)) / 1024, "milvus_rss_mb": sum(map(rss_kb, milvus)) / 1024,
        }

    def open_files(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.process.pid}/fd"))
        except OSError:
            return 0


def _fold(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def citations_of(reply: str) -> list[tuple[str, str]]:
    """(path, quote) of each citation in a chat reply's Markdown."""
    found = []
    for _, quote, source in _CITATION.findall(reply):
        source = source.split(" · [open the original]")[0]
        path = html.unescape(_ESCAPE.sub(r"\1", source.rsplit(" · ", 1)[-1]))
        text = html.unescape(_ESCAPE.sub(r"\1", quote.replace("**", "")))
        found.append((path, text.strip().removeprefix("“").removesuffix("”")))
    return found


def user(server: Server, titles: list[str], stop_at: float, asked: list[Asked], seed: int) -> None:
    """One chat user: a new conversation with a title question, then a follow-up, again and again; a new session
    every CONVERSATIONS_PER_SESSION conversations, as readers come and go, and after a failure."""
    from gradio_client import Client

    chooser = random.Random(seed)
    client = None
    conversations = 0
    while time.monotonic() < stop_at:
        if conversations % CONVERSATIONS_PER_SESSION == 0:
            client = None
        conversations += 1
        try:
            client = client or Client(server.url, verbose=False)
        except Exception:  # the server is down (killed): try again shortly
            time.sleep(1)
            continue
        messages: list = []
        try:
            _predict(client, api_name="/new_conversation")  # as a reader presses "New conversation"
        except Exception:  # the server is down (killed): a new session once it is back
            client = None
            continue
        for turn, question in enumerate((f"What happened in the story “{chooser.choice(titles)}”?", FOLLOW_UP)):
            started = time.monotonic()
            try:
                _, messages, *_ = _predict(client, question, messages, api_name="/ask_question")
                reply = messages[-1]["content"][0]["text"] if messages else ""
                if not messages or reply.startswith("No answer"):
                    raise RuntimeError(reply[:120] or "no reply")
                asked.append(Asked(started, time.monotonic(), True, citations=citations_of(reply)))
            except Exception as error:  # every failure is counted, and the session started again
                what = f"{('question', 'follow-up')[turn]}: {type(error).__name__}: {error}"
                asked.append(Asked(started, time.monotonic(), False, what[:200]))
                client = None
                break


def _predict(client, *data, api_name: str):
    """`client.predict`, then wait for the end of its event stream (see `_await_stream_end`)."""
    result = client.predict(*data, api_name=api_name)
    _await_stream_end(client)
    return result


def _await_stream_end(client) -> None:
    """Wait (at most STREAM_END_SECONDS) until the client has read the end of its session's event stream. The
    server ends that stream right after the session's last event completes; by gradio_client's code, a prediction
    submitted before the client has read the end is registered on the closing stream and raised as CancelledError.
    A reader takes longer than this to type a follow-up, or to ask after pressing "New conversation"."""
    deadline = time.monotonic() + STREAM_END_SECONDS
    while getattr(client, "stream_open", False) and time.monotonic() < deadline:
        time.sleep(0.01)


def churn(articles: Path, pool: list[Path], versions: Versions, newsroom: Newsroom, stop_at: float,
          rng: random.Random) -> None:
    """Every CHURN_SECONDS: add a story from the pool (or a saved page), change one, delete one; now and then the
    feed gains an entry."""
    pages = sorted(PAGES.glob("*.htm*"))
    rounds = 0
    while time.monotonic() < stop_at:
        time.sleep(CHURN_SECONDS)
        rounds += 1
        present = [p for p in find_article_files(articles) if p.suffix == ".txt" and p.parent.name != "feeds"]
        if pool:
            source = pool.pop()
            target = articles / "bbc" / source.parent.name / f"late-{source.name}"
            _write(target, source.read_bytes(), articles, versions)
        if rounds % 5 == 0 and pages:
            page = pages[rounds // 5 % len(pages)]
            _write(articles / "saved" / f"{rounds}-{page.name}", page.read_bytes(), articles, versions)
        if present:
            changed = rng.choice(present)
            text = changed.read_text(encoding="utf-8", errors="replace")
            _write(changed, (text.rstrip("\n") + f"\n\nUpdate {rounds}: the story was revised.\n").encode(), articles,
                   versions)
            gone = rng.choice(present)
            if gone != changed and gone.exists():
                gone.unlink()
                versions.record(gone.relative_to(articles).as_posix(), None)
        if rounds % FEED_EVERY_CHURNS == 0 and pool:
            source = pool.pop()
            lines = [line for line in source.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
            slug = f"{source.parent.name}-{source.stem}"
            newsroom.stories[slug] = Story(slug, lines[0], lines[1:])
            kind, slugs = newsroom.feeds["/soak.rss"]
            newsroom.feeds["/soak.rss"] = (kind, [*slugs, slug])


def _write(target: Path, data: bytes, articles: Path, versions: Versions) -> None:
    temporary = target.with_name(f".{target.name}.part")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(data)
    try:
        text = text_of(data, target.suffix)
    except ValueError:
        text = None
    os.replace(temporary, target)
    versions.record(target.relative_to(articles).as_posix(), text)


def verify(asked: list[Asked], articles: Path, versions: Versions) -> tuple[int, list[str]]:
    """How many citations were checked, and those whose quote the file did not hold when the answer was given."""
    checked, bad = 0, []
    for answer in (a for a in asked if a.ok):
        for path, quote in answer.citations:
            texts = versions.texts_between(path, answer.started, answer.ended)
            if texts is None:  # written by the server (a feed's page), never changed since
                try:
                    texts = [article_text(articles / path)]
                except (OSError, ValueError):
                    texts = []
            checked += 1
            if not any(_fold(quote) in _fold(text) for text in texts):
                bad.append(f"{path}: {quote[:80]}")
    return checked, bad


def sample(server: Server, work: Path, store: str, asked: list[Asked], minute: int, since: float) -> Minute:
    window = [a for a in asked if since <= a.ended]
    after_kill = [a for a in window if not a.ok and _after_kill(a, server.kills)]
    latencies = [(a.ended - a.started) * 1000 for a in window if a.ok]
    index_path = Path(store.removeprefix("milvus:"))
    index_files = [index_path] if index_path.is_file() else [p for p in index_path.rglob("*") if p.is_file()]
    temporary = sum(1 for folder in (work / "tmp", work / "gradio") for p in folder.rglob("*") if p.is_file())
    rss = {key: round(value, 1) for key, value in server.memory().items()}
    return Minute(
        minute, sum(a.ok for a in window), sum(not a.ok for a in window) - len(after_kill), len(after_kill),
        float(np.percentile(latencies, 50)) if latencies else float("nan"),
        float(np.percentile(latencies, 95)) if latencies else float("nan"),
        rss["rss_mb"], rss["server_rss_mb"], rss["worker_rss_mb"], rss["milvus_rss_mb"], server.open_files(), temporary,
        round(sum(p.stat().st_size for p in index_files if p.exists()) / 1e6, 1),
        sum(1 for p in index_path.glob("gen-*")) if index_path.is_dir() else 0,
    )


def _after_kill(asked: Asked, kills: list[float]) -> bool:
    """Whether a question was asked during a kill or in the seconds after it."""
    return any(0 <= asked.started - k <= KILL_GRACE_SECONDS or asked.started <= k <= asked.ended for k in kills)


def growth_within_lives(minutes: list[Minute], kills_at: list[float], key: str = "rss_mb") -> float:
    """The largest growth of RSS (`key`: all processes, or one of them) within one server's life (between kills),
    from the end of its warm-up to its last minute: what a server that is never killed would keep adding."""
    bounds = [0.0, *kills_at, float("inf")]
    growths = []
    for start, end in zip(bounds, bounds[1:]):
        rss = [getattr(m, key) for m in minutes if start + WARM_UP_MINUTES < m.minute - 1 and m.minute <= end]
        if len(rss) > 1:
            growths.append(rss[-1] / rss[0] - 1)
    return max(growths, default=float("nan"))


def settle(articles: Path, store: str, server: Server) -> tuple[set[str], set[str]]:
    """Let the server catch up with the folder, stop it, and return (the folder's readable articles, the index's), both
    read once the server has stopped. The folder is read again at every check: the server's own feed fetches add to
    it until the end."""
    deadline = time.monotonic() + SETTLE_SECONDS
    agreed = 0
    while time.monotonic() < deadline and not store.startswith("milvus:") and agreed < 2:
        try:
            indexed = {a.path for a in qa.describe_index(store=store).articles}
        except (FileNotFoundError, RuntimeError):
            indexed = set()
        agreed = agreed + 1 if indexed == _readable(articles) else 0
        time.sleep(3)
    if store.startswith("milvus:"):
        time.sleep(min(SETTLE_SECONDS, 60))
    server.stop()
    return _readable(articles), {a.path for a in qa.describe_index(store=store).articles}


def _readable(articles: Path) -> set[str]:
    return {p.relative_to(articles).as_posix() for p in find_article_files(articles)}


def plot(minutes: list[Minute], target: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    series = [("answers / minute", "answers"), ("errors (restart errors dotted)", "errors"), ("p50 / p95 ms (log scale)", "p50_ms"),
              ("RSS, MB: all; server, worker, Milvus dotted", "rss_mb"), ("open files, temporary files", "open_files"), ("index MB, generations", "index_mb")]
    x = [m.minute for m in minutes]
    for axis, (name, key) in zip(axes.flat, series):
        axis.plot(x, [getattr(m, key) for m in minutes], marker=".")
        axis.set_title(name, fontsize=10)
    axes[0][1].plot(x, [m.restart_errors for m in minutes], linestyle=":")
    axes[0][2].plot(x, [m.p95_ms for m in minutes], marker=".")
    axes[0][2].set_yscale("log")  # questions that waited for the first build would flatten the rest
    for key in ("server_rss_mb", "worker_rss_mb", "milvus_rss_mb"):
        axes[1][0].plot(x, [getattr(m, key) for m in minutes], linestyle=":")
    axes[1][1].plot(x, [m.temporary_files for m in minutes], marker=".")
    axes[1][2].plot(x, [m.generations for m in minutes], marker=".")
    for axis in axes[1]:
        axis.set_xlabel("minute")
    figure.suptitle(title)
    figure.tight_layout()
    target.parent.mkdir(exist_ok=True)
    figure.savefig(target, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--kill-every", type=float, default=10, help="minutes between SIGKILLs (default: %(default)s)")
    parser.add_argument("--stories", type=int, default=500, help="BBC stories in the folder at the start")
    parser.add_argument("--store", choices=("embedded", "milvus"), default="embedded")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, help="where the figures and plot go (default: bench/results/, docs/)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="qa-soak-"))
    articles = work / "articles"
    for folder in ("tmp", "gradio"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "seeds", articles, dirs_exist_ok=True)
    rng = random.Random(args.seed)
    bbc = sorted(BBC.rglob("*.txt"))
    rng.shuffle(bbc)
    start_with, pool = bbc[: args.stories], bbc[args.stories:]
    versions = Versions()
    for source in start_with:
        target = articles / "bbc" / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        _write(target, source.read_bytes(), articles, versions)
    for path in find_article_files(articles):
        relative = path.relative_to(articles).as_posix()
        if relative not in versions.history:
            versions.record(relative, article_text(path))
    titles = [source.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip() for source in start_with]

    newsroom = Newsroom()
    newsroom.feeds["/soak.rss"] = ("rss", [])
    site = serve_newsroom(newsroom)
    (articles / "feeds.conf").write_text(f"{newsroom.url('/soak.rss')} feeds/soak\n", encoding="utf-8")

    store = f"milvus:{work / 'index.db'}" if args.store == "milvus" else str(work / "index")
    server = Server(articles, store, work, _free_port())
    print(f"soak: {args.minutes:g} min, {args.users} users, a kill every {args.kill_every:g} min, {args.store} store, "
          f"{len(start_with)} BBC stories + seeds at the start; work in {work}", flush=True)
    server.start()
    begun = time.monotonic()
    stop_at = begun + args.minutes * 60
    asked: list[Asked] = []
    threads = [threading.Thread(target=user, args=(server, titles, stop_at, asked, args.seed + n), daemon=True)
               for n in range(args.users)]
    churn_failures: list[str] = []

    def churning() -> None:
        try:
            churn(articles, pool, versions, newsroom, stop_at, rng)
        except Exception as error:  # the run goes on, and fails at the end: a soak without churn proves too little
            churn_failures.append(f"{type(error).__name__}: {error}")
            raise

    threads.append(threading.Thread(target=churning, daemon=True))
    for thread in threads:
        thread.start()
    minutes: list[Minute] = []
    next_kill = begun + args.kill_every * 60
    for minute in range(1, int(np.ceil(args.minutes)) + 1):
        while time.monotonic() < min(begun + minute * 60, stop_at):
            if time.monotonic() >= next_kill and time.monotonic() < stop_at - 30:
                server.kill()
                print(f"  killed the server at {(time.monotonic() - begun) / 60:.1f} min", flush=True)
                server.start()
                next_kill += args.kill_every * 60
            time.sleep(1)
        minutes.append(sample(server, work, store, asked, minute, begun + (minute - 1) * 60))
        print("  " + " ".join(f"{k}={v}" for k, v in asdict(minutes[-1]).items()), flush=True)
    for thread in threads:
        thread.join(timeout=120)

    site.shutdown()  # no new feed entries from here on
    folder, indexed = settle(articles, store, server)
    checked, bad = verify(asked, articles, versions)
    errors = sum(m.errors for m in minutes)
    kills_at = [(k - begun) / 60 for k in server.kills]
    life_growth = growth_within_lives(minutes, kills_at)
    server_growth = growth_within_lives(minutes, kills_at, "server_rss_mb")
    summary = {
        "store": args.store, "minutes": args.minutes, "users": args.users, "kills": len(server.kills),
        "answers": sum(a.ok for a in asked), "errors": errors, "restart_errors": sum(m.restart_errors for m in minutes),
        "churn_failed": churn_failures[0] if churn_failures else None,
        "citations_checked": checked, "citations_bad": len(bad), "index_equals_folder": folder == indexed,
        "missing_from_index": sorted(folder - indexed)[:10], "not_in_folder": sorted(indexed - folder)[:10],
        "rss_growth_within_a_life": None if life_growth != life_growth else round(life_growth, 3),
        "server_rss_growth_within_a_life": None if server_growth != server_growth else round(server_growth, 3),
        "largest_worker_rss_mb": max((m.worker_rss_mb for m in minutes), default=0.0),
        "error_samples": sorted({a.error for a in asked if not a.ok and not _after_kill(a, server.kills)})[:10],
        "minutes_log": [asdict(m) for m in minutes],
    }
    results, docs = (args.output, args.output) if args.output else (RESULTS, DOCS)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"soak-{args.store}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    try:
        plot(minutes, docs / f"soak-{args.store}.png", f"qa serve soak: {args.store} store, {args.users} users, "
             f"kills every {args.kill_every:g} min")
    except ImportError:
        print("  (no plot: matplotlib is not installed; `pip install -e '.[bench]'`)")
    for key in ("answers", "errors", "churn_failed", "restart_errors", "kills", "citations_checked", "citations_bad",
                "index_equals_folder", "rss_growth_within_a_life",
                "server_rss_growth_within_a_life", "largest_worker_rss_mb"):
        print(f"{key:26s} {summary[key]}")
    for line in summary["error_samples"]:
        print(f"  error: {line}")
    for line in bad[:5]:
        print(f"  unverified: {line}")
    if folder != indexed:
        print(f"  missing from the index: {summary['missing_from_index']}; not in the folder: {summary['not_in_folder']}")
    return 0 if errors == 0 and not churn_failures and not bad and folder == indexed and summary["answers"] else 1


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
