"""Command line: `qa index`, `qa ask`, `qa eval`, `qa serve`, `qa add` and `qa feeds`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from . import config
from .distributed import DEFAULT_ARTICLES_PER_BATCH, LOCAL, RaySettings
from .feeds import DEFAULT_FEEDS_EVERY_MINUTES, FEEDS_FILE
from .fetch import ALLOW_PRIVATE_ENV
from .progress import PROGRESS_LOGGER

logger = logging.getLogger("qa")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)  # a long build's progress, when not on a terminal
    for handler in logging.getLogger().handlers:  # also holds back libraries that set their own loggers to DEBUG
        handler.addFilter(lambda record: record.levelno >= level or record.name == PROGRESS_LOGGER)
    try:
        if getattr(args, "allow_private_addresses", False):
            os.environ[ALLOW_PRIVATE_ENV] = "1"  # the fetches of this process, the chat's and the feeds' too
        if getattr(args, "reranker", None):
            from .reranker import RERANKER_ENV, reranker_name

            os.environ[RERANKER_ENV] = reranker_name(args.reranker)  # every answer of this process, the chat's too
        if getattr(args, "reader", None):
            from .reader import READER_ENV, reader_name

            os.environ[READER_ENV] = reader_name(args.reader)
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted; the previous index is unchanged", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"qa: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qa", description="Answer questions about a folder of news articles with verbatim, cited quotes."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is happening")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="build or update the index", description="Build or update the index incrementally.")
    _add_articles(index)
    _add_index(index)
    index.add_argument("--model", help=f"sentence-transformers model (default: ${config.MODEL_ENV} or {config.DEFAULT_MODEL})")
    index.add_argument(
        "--backend", choices=config.BACKENDS,
        help=f"how the model runs (default: ${config.BACKEND_ENV} or {config.DEFAULT_BACKEND})",
    )
    index.add_argument("--rebuild", action="store_true", help="re-embed every article, ignoring the existing index")
    index.add_argument("--watch", action="store_true", help="then keep watching the folder and index every change (Ctrl-C stops)")
    index.add_argument(
        "--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
        help="chunk and embed on Ray: a Ray instance started here, or the cluster at ADDRESS (ray://HOST:10001, or "
             "auto on one of its nodes); needs qa[ray]. Later --watch builds embed here",
    )
    index.add_argument("--ray-workers", type=int, help="Ray actors embedding at once (default: one per CPU Ray has)")
    index.add_argument("--ray-batch", type=int, default=DEFAULT_ARTICLES_PER_BATCH,
                       help="articles sent to an actor at a time (default: %(default)s)")
    _add_feeds_every(index)
    index.set_defaults(run=_index)

    ask = commands.add_parser("ask", help="answer a question", description="Answer a question; with none, read questions in a loop.")
    ask.add_argument("question", nargs="?", help="the question (omit it to ask several in a row)")
    _add_index(ask)
    ask.add_argument("--top-k", type=int, default=config.MAX_QUOTES, help="most quotes in an answer (default: %(default)s)")
    _add_scope(ask)
    _add_models(ask)
    ask.set_defaults(run=_ask)

    evaluate = commands.add_parser("eval", help="score a question set", description="Score answers on a JSON-lines question set.")
    evaluate.add_argument("questions", help="JSON-lines file: question, gold, answerable (as in dev.jsonl)")
    _add_index(evaluate)
    _add_scope(evaluate)
    evaluate.add_argument("--self-history", action="store_true", help="ask each conversation in order, with qa's own earlier answers as its history")
    evaluate.add_argument("--show-misses", action="store_true", help="list the ids of questions that missed")
    _add_models(evaluate)
    evaluate.set_defaults(run=_eval)

    serve = commands.add_parser("serve", help="start the web chat", description="Start the web chat.")
    _add_articles(serve)
    _add_index(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    serve.add_argument("--auth", default=os.environ.get("QA_AUTH"), help="USER:PASSWORD login for the chat (default: $QA_AUTH)")
    serve.add_argument("--no-watch", action="store_true", help="update the index on start only, not on every change to the folder")
    _add_feeds_every(serve)
    _add_models(serve)
    serve.set_defaults(run=_serve)

    add = commands.add_parser(
        "add", help="fetch web pages into the articles folder",
        description="Fetch web pages and keep them as .html files in the articles folder, with their URL.",
    )
    add.add_argument("urls", nargs="+", metavar="URL", help="the page's web address (http or https)")
    _add_articles(add)
    add.set_defaults(run=_add)

    feeds = commands.add_parser(
        "feeds", help="follow RSS and Atom feeds",
        description=f"The feeds the articles folder follows, listed in its {FEEDS_FILE}. Each feed's new entries are "
        "saved as pages in a sub-folder of its own.",
    )
    actions = feeds.add_subparsers(required=True, metavar="ACTION")
    for name, text, takes_url in (("add", "follow a feed and save its entries' pages", True),
                                  ("list", "the feeds followed, with their last update", False),
                                  ("remove", "stop following a feed (its pages stay)", True),
                                  ("update", "fetch every feed once and save its new entries' pages", False)):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if takes_url:
            action.add_argument("url", metavar="URL", help="the feed's web address")
        _add_articles(action)
        action.set_defaults(run=_feeds, action=name)
    return parser


def _add_articles(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--articles", help=f"articles folder (default: ${config.ARTICLES_ENV} or {config.DEFAULT_ARTICLES_DIR})")
    parser.add_argument(
        "--allow-private-addresses", action="store_true",
        help=f"let fetches go to this machine and its private network (default: ${ALLOW_PRIVATE_ENV})",
    )


def _add_feeds_every(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--feeds-every", type=float, default=DEFAULT_FEEDS_EVERY_MINUTES, metavar="MINUTES",
        help=f"update the folder's feeds ({FEEDS_FILE}) this often, in the background; 0: never (default: %(default)g)",
    )


def _add_index(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", help=f"index folder (default: ${config.INDEX_ENV} or {config.DEFAULT_INDEX_DIR})")
    parser.add_argument(
        "--store",
        help=f"keep the index in Milvus instead: milvus:PATH (a Milvus Lite file) or http(s)://HOST:PORT (a Milvus "
        f"server; token in $QA_MILVUS_TOKEN) (default: ${config.STORE_ENV}, else the --index folder)",
    )


def _add_models(parser: argparse.ArgumentParser) -> None:
    from .reader import DEFAULT_READER, NO_READER, READER_ENV
    from .reranker import DEFAULT_RERANKER, NO_RERANKER, RERANKER_ENV

    parser.add_argument(
        "--reranker", help=f"the cross-encoder that reads the best sentences against the question, or {NO_RERANKER} for "
        f"the linear ranker alone (default: ${RERANKER_ENV} or {DEFAULT_RERANKER})",
    )
    parser.add_argument(
        "--reader", help=f"the model that points at the short answer inside the quotes, or {NO_READER} to leave it to "
        f"the reranker (default: ${READER_ENV} or {DEFAULT_READER})",
    )


def _add_scope(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_argument_group("scope", "answer from some of the articles only (any combination)")
    scope.add_argument("--folder", help="a sub-folder of the articles folder, e.g. business")
    scope.add_argument("--since", help="articles dated on or after this day (YYYY-MM-DD)")
    scope.add_argument("--until", help="articles dated on or before this day (YYYY-MM-DD)")
    scope.add_argument("--article", action="append", help="this article file (repeat for several)")


def _where(args: argparse.Namespace) -> dict:
    return {key: value for key, value in (("folder", args.folder), ("since", args.since), ("until", args.until),
                                          ("articles", args.article)) if value}


def _store(args: argparse.Namespace) -> str:
    return config.store_location(args.store, args.index)


def _index(args: argparse.Namespace) -> int:
    from .index import build_index

    ray = RaySettings(args.ray, args.ray_workers, args.ray_batch) if args.ray else None
    report = build_index(args.articles, model=args.model, rebuild=args.rebuild, backend=args.backend, store=_store(args),
                         ray=ray)
    print(
        f"{report.added} added, {report.updated} updated, {report.removed} removed, {report.unchanged} unchanged; "
        f"{report.chunks_embedded} chunks embedded in {report.seconds:.1f} s"
    )
    for skipped in report.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}")
    if args.watch:
        from .watch import FolderWatcher

        print(f"watching {config.articles_dir(args.articles)} (Ctrl-C stops)", flush=True)
        _follow_feeds(args)
        FolderWatcher(args.articles, _store(args)).start().wait()
    return 0


def _ask(args: argparse.Namespace) -> int:
    from .answers import Turn, answer

    if args.question is not None:
        _print_answer(answer(args.question, store=_store(args), top_k=args.top_k, where=_where(args)))
        return 0
    history: list[Turn] = []
    print("Ask a question about the articles (an empty line or Ctrl-D ends).")
    while True:
        try:
            question = input("? ").strip()
        except EOFError:
            return 0
        if not question:
            return 0
        try:
            reply = answer(question, store=_store(args), top_k=args.top_k, history=history, where=_where(args))
        except ValueError as error:
            print(f"qa: {error}", file=sys.stderr)
            continue
        _print_answer(reply)
        history.append((question, reply))


def _print_answer(reply) -> None:
    from .articles import article_text

    if reply.short is not None:
        print(f"{reply.short.text} [{reply.short_citation}]\n")
    print(reply.text)
    for number, citation in enumerate(reply.citations, start=1):
        line = article_text(citation.path).count("\n", 0, citation.start) + 1
        date = f", {citation.date}" if citation.date else ""
        print(f"  [{number}] {citation.title}{date} — {citation.path}:{line} (chars {citation.start}–{citation.end})")
        if citation.url:
            print(f"      {citation.url}")


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, load_questions

    report = evaluate(load_questions(args.questions), store=_store(args), self_history=args.self_history, where=_where(args))
    print(report.summary())
    if args.show_misses and report.misses:
        print("missed: " + " ".join(report.misses))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .web import serve

    auth = None
    if args.auth:
        user, separator, password = args.auth.partition(":")
        if not separator or not user or not password:
            raise ValueError("--auth must look like USER:PASSWORD")
        auth = (user, password)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop ends the server as Ctrl-C does, build worker too
    serve(config.articles_dir(args.articles), _store(args), host=args.host, port=args.port, auth=auth,
          watch=not args.no_watch, feeds_every=args.feeds_every)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _follow_feeds(args: argparse.Namespace) -> None:
    from .feeds import FeedFollower

    if args.feeds_every > 0:
        FeedFollower(config.articles_dir(args.articles), args.feeds_every).start()


def _add(args: argparse.Namespace) -> int:
    from .sources import save_page

    failed = 0
    with _fetcher() as fetcher:
        for url in args.urls:
            try:
                print(f"{url}: {save_page(url, config.articles_dir(args.articles), fetcher=fetcher).describe()}", flush=True)
            except ValueError as error:
                print(f"qa: error: {error}", file=sys.stderr, flush=True)
                failed += 1
    return 2 if failed else 0


def _feeds(args: argparse.Namespace) -> int:
    from . import feeds

    folder = config.articles_dir(args.articles)
    if args.action == "list":
        listed = feeds.feed_states(folder)
        if not listed:
            print(f"{folder} follows no feeds; add one with `qa feeds add URL`")
        for feed, state in listed:
            print(f"{feed.url}\n  {state.title or '(not fetched yet)'} → {feed.folder}/; {state.pages} pages; "
                  f"last update {state.checked_at or 'never'}, {state.new_entries} new"
                  + (f"; last error: {state.last_error}" if state.last_error else ""))
        return 0
    if args.action == "remove":
        feed = feeds.remove_feed(args.url, folder)
        print(f"no longer following {feed.url}; its pages stay in {feed.folder}/")
        return 0
    with _fetcher() as fetcher:
        updates = [feeds.add_feed(args.url, folder, fetcher)] if args.action == "add" else feeds.update_feeds(folder, fetcher)
    if not updates:
        print(f"{folder} follows no feeds; add one with `qa feeds add URL`")
    for update in updates:
        print(update.describe())
    return 2 if any(update.errors for update in updates) else 0


def _fetcher():
    from .fetch import Fetcher

    return Fetcher()


if __name__ == "__main__":
    sys.exit(main())
