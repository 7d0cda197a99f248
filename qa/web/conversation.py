"""The conversation: asking in the light of earlier turns, showing each answer (its short answer first) with its
citations, the cited article with the quote marked, and the conversation as a Markdown file."""

from __future__ import annotations

import html
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from .. import Answer, Citation, answer
from ..answers import quoted
from ..articles import article_text
from ..embeddings import cache_dir
from ..spans import ShortAnswer
from ..watch import FolderWatcher
from .library import where_of
from .render import TITLE, display_path, hint_html, link_target, markdown_text, shortened

logger = logging.getLogger(__name__)

EXPORT_NAME = "qa-conversation.md"
EXPORTS_DIR = Path(tempfile.gettempdir()) / f"qa-exports-{os.getpid()}"
"""Where this server writes the download button's files, one sub-folder per export."""
EXPORT_KEEP_SECONDS = 600.0
QUOTE_MARK_ID = "qa-quote"
SHORT_MARK_CLASS = "qa-short"
CITE_LINK_PREFIX = "#qa-cite-"
CHOICE_SEPARATOR = ":"
BROWSER_SECRET_FILE = "browser-secret"
BUILD_WAIT_SECONDS = 600.0
"""A question asked while the first index is being built waits this long for it, showing the build's progress."""
BUILD_POLL_SECONDS = 1.0


@dataclass
class Turn:
    """One question of a conversation and what came back: an answer, or the message saying why there is none."""

    question: str
    text: str
    citations: list[Citation] = field(default_factory=list)
    failed: bool = False
    short: ShortAnswer | None = None

    @property
    def short_citation(self) -> int | None:
        """The number of the quote that holds the short answer (see Answer.short_citation)."""
        return Answer(self.question, self.text, self.citations, short=self.short).short_citation


def respond(
    text: str,
    history: list[Turn],
    messages: list[dict],
    store: str,
    articles_root: Path,
    watcher: FolderWatcher | None,
    scope: Sequence[object],
):
    """Show the question at once, then the answer from the articles in `scope` (the chat's scope controls); yields
    values for the chat's outputs."""
    text = (text or "").strip()
    if not text:
        gr.Warning("Type a question about the articles first.")
        yield text, history, messages, gr.skip(), gr.skip()
        return
    pending = [*messages, {"role": "user", "content": markdown_text(text)}]
    # The article view is given a value, never gr.skip(): Gradio keeps a copy of an HTML component in the session for
    # every skip sent to it: one copy (about 4 KB, by tracemalloc) kept per answer.
    yield "", history, [*pending, {"role": "assistant", "content": "Searching the articles…"}], gr.skip(), hint_html()
    try:
        where = where_of(*scope)
    except ValueError as error:
        turn = Turn(text, f"That scope cannot be used: {error}.", failed=True)
    else:
        deadline = time.monotonic() + BUILD_WAIT_SECONDS
        while (turn := ask(text, history, store, watcher, where, wait=time.monotonic() < deadline)) is None:
            waiting = f"Waiting for the index, which is being built: {watcher.describe()}"
            yield "", history, [*pending, {"role": "assistant", "content": markdown_text(waiting)}], gr.skip(), hint_html()
            time.sleep(BUILD_POLL_SECONDS)
    history = [*history, turn]
    reply = {"role": "assistant", "content": reply_markdown(turn, len(history) - 1, articles_root)}
    yield "", history, [*pending, reply], citation_radio(len(history) - 1, turn, articles_root), hint_html()


def ask(
    text: str, history: list[Turn], store: str, watcher: FolderWatcher | None = None, where: dict | None = None,
    wait: bool = False,
) -> Turn | None:
    """Answer one question from the articles `where` admits, in the light of the earlier, successful turns. With
    `wait`, None while there is no index yet and the watcher is building one (ask again shortly)."""
    earlier = [
        (turn.question, Answer(turn.question, turn.text, turn.citations, abstained=not turn.citations))
        for turn in history
        if not turn.failed
    ]
    try:
        result: Answer = answer(text, store=store, history=earlier, where=where)
    except ValueError as error:
        return Turn(text, f"That question cannot be asked: {error}", failed=True)
    except (FileNotFoundError, RuntimeError) as error:
        if watcher is not None and watcher.status.building:
            if wait:
                return None
            return Turn(text, f"No answer yet: the index is being built. {watcher.describe()} Ask again in a moment.",
                        failed=True)
        logger.warning("no answer: %s", error)
        return Turn(text, f"No answer: {error}", failed=True)
    return Turn(text, result.text, list(result.citations), short=result.short)


def reply_markdown(turn: Turn, turn_number: int, articles_root: Path) -> str:
    """The answer as Markdown: each numbered quote with its title, date and file, the number a link that opens the
    quote in its article; all article text escaped."""
    if not turn.citations:
        return markdown_text(turn.text)
    parts = []
    holder = turn.short_citation
    if holder is not None:
        parts.append(f"**{markdown_text(turn.short.text)}** [\\[{holder}\\]]({CITE_LINK_PREFIX}{turn_number}-{holder})")
    for number, citation in enumerate(turn.citations, start=1):
        source = " · ".join(
            markdown_text(part)
            for part in (citation.title, citation.date, display_path(citation.path, articles_root))
            if part
        )
        if citation.url:
            source += f" · [open the original]({link_target(citation.url)})"
        link = f"{CITE_LINK_PREFIX}{turn_number}-{number}"
        before, span, after = _quote_parts(citation, turn.short if number == holder else None)
        quote = markdown_text(before) + (f"**{markdown_text(span)}**" if span else "") + markdown_text(after)
        parts.append(f"[**\\[{number}\\]**]({link}) {quote}  \n*{source}*")
    return "\n\n".join(parts)


def _quote_parts(citation: Citation, short: ShortAnswer | None) -> tuple[str, str, str]:
    """The quote in quotation marks, split around the short answer inside it (the middle part empty without one)."""
    text = quoted(citation.quote)
    if short is None:
        return text, "", ""
    start = short.start - citation.start + (text != citation.quote)
    end = start + len(short.text)
    return text[:start], text[start:end], text[end:]


def citation_radio(turn_number: int, turn: Turn, articles_root: Path) -> gr.Radio:
    """The chooser for one turn's citations, nothing chosen yet."""
    choices = [
        (
            f"[{number}] {shortened(citation.title)} · {display_path(citation.path, articles_root)}",
            f"{turn_number}{CHOICE_SEPARATOR}{number}",
        )
        for number, citation in enumerate(turn.citations, start=1)
    ]
    return gr.Radio(choices=choices, value=None)


def turn_citations(history: list[Turn], event: gr.SelectData, articles_root: Path):
    """Clicking a message of the chat offers that turn's citations."""
    index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    turn_number = int(index) // 2
    if not 0 <= turn_number < len(history):
        return gr.skip()
    return citation_radio(turn_number, history[turn_number], articles_root)


def messages_of(history: list[Turn], articles_root: Path) -> list[dict]:
    """The chat's messages for a whole conversation, as they were first shown."""
    messages = []
    for number, turn in enumerate(history):
        messages += [
            {"role": "user", "content": markdown_text(turn.question)},
            {"role": "assistant", "content": reply_markdown(turn, number, articles_root)},
        ]
    return messages


def last_citations(history: list[Turn], articles_root: Path) -> gr.Radio:
    if not history:
        return gr.Radio(choices=[], value=None)
    return citation_radio(len(history) - 1, history[-1], articles_root)


def turns_from_json(saved: object) -> list[Turn]:
    """The conversation kept in the browser, or none when what is kept is not one (an older or damaged copy)."""
    try:
        return [
            Turn(
                str(turn["question"]),
                str(turn["text"]),
                [Citation(**citation) for citation in turn["citations"]],
                bool(turn["failed"]),
                ShortAnswer(**turn["short"]) if turn.get("short") else None,
            )
            for turn in saved or []
        ]
    except (KeyError, TypeError) as error:
        logger.info("the conversation kept in the browser cannot be read (%s); starting afresh", error)
        return []


def browser_secret() -> str:
    """The key the conversation kept in the browser is encrypted with. It is made once and kept in qa's cache folder
    (readable by its owner only), so a restarted server can still read what a reader's browser kept."""
    path = cache_dir() / BROWSER_SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with os.fdopen(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as made:
            made.write(secrets.token_urlsafe(32))
        try:
            os.link(staging, path)  # whole or not at all, and the first of two servers starting at once wins
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_text(encoding="utf-8").strip()


def conversation_kept(history: list[Turn], messages: list[dict], saved: object, articles_root: Path
                      ) -> tuple[list[Turn], list[dict]]:
    """The conversation and the chat's messages: the server's, or, when the server no longer has the conversation
    (it restarted, or let the session go), the copy kept in the browser, shown again, so that a follow-up is read
    against it."""
    if history:
        return history, messages
    kept = turns_from_json(saved)
    return (kept, messages_of(kept, articles_root)) if kept else (history, messages)


def conversation_markdown(history: list[Turn], articles_root: Path) -> str:
    """The conversation as Markdown: each question, then its short answer in bold (with the number of the quote
    holding it and its character offsets), then each quote with its article's title, date, file and
    character offsets (in the text `qa.article_text` gives), or the reason there is no answer. Text is written as it
    stands, but for "<", written "&lt;" so that no Markdown viewer runs article text as HTML."""
    lines = [f"# {TITLE}: conversation", "", f"Exported {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", ""]
    for number, turn in enumerate(history, start=1):
        lines += [f"## {number}. {_inert(turn.question)}", ""]
        if not turn.citations:
            lines += [_inert(turn.text), ""]
        if turn.short_citation is not None:
            lines += [f"**{_inert(turn.short.text)}** [{turn.short_citation}] (characters {turn.short.start}–{turn.short.end})", ""]
        for mark, citation in enumerate(turn.citations, start=1):
            source = " · ".join(part for part in (citation.title, citation.date) if part)
            lines += [
                f"> {_inert(quoted(' '.join(citation.quote.split())))} [{mark}]",
                "",
                f"[{mark}] {_inert(source)} — `{display_path(citation.path, articles_root)}`, "
                f"characters {citation.start}–{citation.end}" + (f", <{link_target(citation.url)}>" if citation.url else ""),
                "",
            ]
    return "\n".join(lines)


def _inert(text: str) -> str:
    return " ".join(text.split()).replace("<", "&lt;")


def export_button(history: list[Turn], articles_root: Path):
    """The download button, holding the conversation as a Markdown file (or disabled while it is empty)."""
    if not history:
        return gr.DownloadButton(value=None, interactive=False)
    _remove_old_exports()
    EXPORTS_DIR.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(dir=EXPORTS_DIR)) / EXPORT_NAME
    target.write_text(conversation_markdown(history, articles_root), encoding="utf-8")
    return gr.DownloadButton(value=str(target), interactive=True)


def _remove_old_exports() -> None:
    """Delete the exports written more than EXPORT_KEEP_SECONDS ago (Gradio serves its own copy of each)."""
    if not EXPORTS_DIR.is_dir():
        return
    oldest = time.time() - EXPORT_KEEP_SECONDS
    for folder in EXPORTS_DIR.iterdir():
        try:
            if folder.stat().st_mtime < oldest:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def new_conversation():
    return [], [], gr.Radio(choices=[], value=None), hint_html()


def citation_html(history: list[Turn], choice: str | None, articles_root: Path) -> str:
    """The cited article as escaped text, with the quote marked and the short answer marked inside it; a note instead
    when the file has changed."""
    chosen = _chosen(history, choice)
    if chosen is None:
        return hint_html()
    turn, number = chosen
    citation = turn.citations[number - 1]
    head = " · ".join(
        html.escape(part) for part in (citation.date, display_path(citation.path, articles_root)) if part
    )
    if citation.url:
        head += (f' · <a href="{html.escape(link_target(citation.url))}" target="_blank" rel="noopener noreferrer" '
                 f'class="qa-original">open the original</a>')
    header = f'<div class="qa-article-head"><strong>{html.escape(citation.title)}</strong><br>{head}</div>'
    try:
        text = article_text(citation.path)
    except (OSError, ValueError) as error:
        text = ""
        logger.warning("cannot read %s: %s", citation.path, error)
    if text[citation.start : citation.end] != citation.quote:
        note = "This article has changed or gone since the index was built; the quote as indexed:"
        body = f'<p class="qa-hint">{html.escape(note)}</p><mark id="{QUOTE_MARK_ID}">{html.escape(citation.quote)}</mark>'
    else:
        short = turn.short if number == turn.short_citation else None
        inside = html.escape(citation.quote) if short is None else (
            html.escape(text[citation.start : short.start])
            + f'<strong class="{SHORT_MARK_CLASS}">{html.escape(short.text)}</strong>'
            + html.escape(text[short.end : citation.end])
        )
        body = (
            html.escape(text[: citation.start])
            + f'<mark id="{QUOTE_MARK_ID}">{inside}</mark>'
            + html.escape(text[citation.end :])
        )
    return f'<div class="qa-article">{header}<div class="qa-article-text">{body}</div></div>'


def find_citation(history: list[Turn], choice: str | None) -> Citation | None:
    chosen = _chosen(history, choice)
    return None if chosen is None else chosen[0].citations[chosen[1] - 1]


def _chosen(history: list[Turn], choice: str | None) -> tuple[Turn, int] | None:
    """The turn and citation number a choice ("turn:number") names, or None when it names none."""
    turn_part, _, number_part = (choice or "").partition(CHOICE_SEPARATOR)
    if not (turn_part.isdigit() and number_part.isdigit()):
        return None
    turn_number, number = int(turn_part), int(number_part)
    if turn_number >= len(history) or not 1 <= number <= len(history[turn_number].citations):
        return None
    return history[turn_number], number
