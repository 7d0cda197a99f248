"""The web chat: ask about the articles, read each cited quote in its article, and add articles to the index."""

from __future__ import annotations

import html
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: Gradio must not phone home

import gradio as gr  # noqa: E402

from . import Answer, Citation, IndexSummary, answer, build_index, config, describe_index  # noqa: E402
from .answers import quoted  # noqa: E402
from .articles import MAX_ARTICLE_BYTES, article_text, text_of  # noqa: E402
from .retrieval import load_index  # noqa: E402
from .watch import FolderWatcher  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "qa · ask the articles"
MAX_UPLOAD_BYTES = MAX_ARTICLE_BYTES
MAX_NAME_CHARS = 120
CHAT_CONCURRENCY = 4
"""Questions answered at once; index builds run one at a time beside them."""
BUILD_CONCURRENCY_ID = "index-build"
EXPORT_NAME = "qa-conversation.md"
WATCH_REFRESH_SECONDS = 2.0
"""How often an open Articles tab shows the watcher's state afresh."""
EXAMPLE_COUNT = 3
SHORT_TITLE_WORDS = 10
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
QUOTE_MARK_ID = "qa-quote"
ARTICLE_HINT = "Pick a citation under the chat to read it here, highlighted in its article."
LOCAL_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
LOCAL_MONO_FONTS = ["ui-monospace", "monospace"]
TABLE_HEADERS = ["Title", "Date", "File", "Chunks"]

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$:])")
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^\w.\-]+")
_CHOICE_SEPARATOR = ":"

SCROLL_TO_QUOTE_JS = f"""
const centre = () => {{
  const box = element.querySelector('.qa-article-text');
  const mark = element.querySelector('#{QUOTE_MARK_ID}');
  if (box && mark) box.scrollTop = Math.max(0, mark.offsetTop - box.clientHeight / 3);
}};
watch('value', centre);
centre();
"""
CSS = """
.qa-article { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 12px; }
.qa-article-head { font-size: 0.95em; margin-bottom: 8px; }
.qa-article-text { position: relative; white-space: pre-wrap; overflow-y: auto; max-height: 560px;
  font-family: var(--font); line-height: 1.5; }
.qa-article-text mark { background: #ffe066; color: #000; padding: 1px 0; }
.qa-hint { color: var(--body-text-color-subdued); }
"""


@dataclass
class Turn:
    """One question of a conversation and what came back: an answer, or the message saying why there is none."""

    question: str
    text: str
    citations: list[Citation] = field(default_factory=list)
    failed: bool = False


def build_app(articles_dir: str, store: str, watcher: FolderWatcher | None = None) -> gr.Blocks:
    """The Gradio app: a Chat tab with the article viewer beside it, and an Articles tab to add and index articles."""
    articles_root = Path(articles_dir)
    with gr.Blocks(title=TITLE) as app:
        turns = gr.State([])
        gr.Markdown(f"# {TITLE}\nEvery answer is made of verbatim quotes from the articles, each one cited to its place.")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    with gr.Column(scale=3):
                        chatbot = gr.Chatbot(
                            label="Chat",
                            height=520,
                            elem_id="qa-chat",
                            latex_delimiters=[],
                            buttons=["copy"],
                            feedback_options=None,
                            examples=_examples(store),
                        )
                        with gr.Row():
                            question = gr.Textbox(
                                show_label=False,
                                placeholder="Ask a question about the articles…",
                                max_length=config.MAX_QUESTION_CHARS,
                                scale=5,
                                elem_id="qa-question",
                            )
                            ask = gr.Button("Ask", variant="primary", scale=1, elem_id="qa-ask")
                        citation_choice = gr.Radio(
                            label="Citations: pick one to read it in its article",
                            choices=[],
                            elem_id="qa-citations",
                        )
                        with gr.Row():
                            new_chat = gr.Button("New conversation", size="sm", elem_id="qa-new-chat")
                            download = gr.DownloadButton(
                                "Download conversation (Markdown)", size="sm", elem_id="qa-download", interactive=False
                            )
                    with gr.Column(scale=2):
                        article_view = gr.HTML(
                            _hint_html(),
                            elem_id="qa-article",
                            js_on_load=SCROLL_TO_QUOTE_JS,
                        )
            with gr.Tab("Articles", id="articles"):
                index_state = gr.Markdown(elem_id="qa-index-state")
                watch_state = gr.Markdown(elem_id="qa-watch-state", visible=watcher is not None)
                articles_table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    datatype="str",
                    interactive=False,
                    wrap=True,
                    elem_id="qa-articles",
                )
                uploads = gr.File(
                    label=f"Add articles (.txt or .md in UTF-8, or saved web pages .html/.htm; at most {MAX_UPLOAD_BYTES // 1_000_000} MB each)",
                    file_count="multiple",
                    file_types=list(config.ARTICLE_SUFFIXES),
                    elem_id="qa-upload",
                )
                replace = gr.Checkbox(label="Replace an existing file of the same name", value=False, elem_id="qa-replace")
                with gr.Row():
                    add = gr.Button("Add to index", variant="primary", elem_id="qa-add")
                    rebuild = gr.Button("Rebuild index", elem_id="qa-rebuild")
                status = gr.Markdown(elem_id="qa-status")

        def ask_question(text: str, history: list[Turn], messages: list[dict]):
            yield from _respond(text, history, messages, store, articles_root, watcher)

        def ask_example(history: list[Turn], messages: list[dict], event: gr.SelectData):
            yield from _respond(event.value.get("text", ""), history, messages, store, articles_root, watcher)

        def show_citation(choice: str | None, history: list[Turn]) -> str:
            return _citation_html(history, choice, articles_root)

        def choose_turn(history: list[Turn], event: gr.SelectData):
            return _choose_turn(history, event, articles_root)

        def add_articles(files: list[str] | None, overwrite: bool, progress=gr.Progress()):
            saved, problems = save_uploads(files or [], articles_root, overwrite)
            if not saved:
                message = problems or ["Choose one or more .txt, .md or .html files first."]
                gr.Warning(" ".join(message))
                return (_status(message), *_index_views(store), None)
            return (*_rebuild(articles_dir, store, progress, problems), None)

        def rebuild_index(progress=gr.Progress()):
            return _rebuild(articles_dir, store, progress, [])

        def export(history: list[Turn]):
            return _export(history, articles_root)

        chat_outputs = [question, turns, chatbot, citation_choice, article_view]
        ask.click(ask_question, [question, turns, chatbot], chat_outputs).then(export, [turns], [download])
        question.submit(ask_question, [question, turns, chatbot], chat_outputs).then(export, [turns], [download])
        chatbot.example_select(ask_example, [turns, chatbot], chat_outputs).then(export, [turns], [download])
        chatbot.select(choose_turn, [turns], [citation_choice, article_view])
        citation_choice.select(show_citation, [citation_choice, turns], [article_view])
        for clear in (new_chat.click, chatbot.clear):
            clear(_new_conversation, None, [turns, chatbot, citation_choice, article_view], queue=False).then(
                export, [turns], [download], queue=False
            )

        build_outputs = [status, index_state, articles_table]
        add.click(
            add_articles,
            [uploads, replace],
            [*build_outputs, uploads],
            concurrency_limit=1,
            concurrency_id=BUILD_CONCURRENCY_ID,
        )
        rebuild.click(rebuild_index, None, build_outputs, concurrency_limit=1, concurrency_id=BUILD_CONCURRENCY_ID)
        app.load(lambda: _index_views(store), None, [index_state, articles_table])
        if watcher is not None:
            gr.Timer(WATCH_REFRESH_SECONDS).tick(watcher.describe, None, [watch_state], queue=False)
    return app


def serve(
    articles_dir: str,
    store: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    watch: bool = True,
) -> None:
    """Serve the web chat until interrupted, answering from `store` (an index folder, `milvus:PATH` or a Milvus
    server's URL); `auth` is a (user, password) login that Gradio asks for. The index is brought up to date with the
    articles folder in the background on start and, with `watch`, whenever files in it are added, changed or removed."""
    if host not in LOCAL_HOSTS and auth is None:
        logger.warning("serving on %s without a login: anyone who can reach this address can use it", host)
    watcher = FolderWatcher(articles_dir, store, watch=watch).start()
    _warm_up(store)
    app = build_app(articles_dir, store, watcher)
    app.queue(default_concurrency_limit=CHAT_CONCURRENCY)
    app.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        max_file_size=MAX_UPLOAD_BYTES,
        css=CSS,
        theme=gr.themes.Default(font=LOCAL_FONTS, font_mono=LOCAL_MONO_FONTS),
        show_error=True,
        footer_links=[],
    )


def _warm_up(store: str) -> None:
    """Load the index and the model before the first reader asks, so the first answer is as quick as the rest."""
    try:
        load_index(store=store).encode_query("warm up")
    except (FileNotFoundError, RuntimeError) as error:
        logger.warning("the chat starts without an index: %s", error)


def _respond(
    text: str, history: list[Turn], messages: list[dict], store: str, articles_root: Path, watcher: FolderWatcher | None
):
    """Show the question at once, then the answer; yields values for the chat's outputs."""
    text = (text or "").strip()
    if not text:
        gr.Warning("Type a question about the articles first.")
        yield text, history, messages, gr.skip(), gr.skip()
        return
    pending = [*messages, {"role": "user", "content": _markdown_text(text)}]
    yield "", history, [*pending, {"role": "assistant", "content": "Searching the articles…"}], gr.skip(), gr.skip()
    turn = _ask(text, history, store, watcher)
    history = [*history, turn]
    reply = {"role": "assistant", "content": _reply_markdown(turn, articles_root)}
    yield "", history, [*pending, reply], _citation_radio(len(history) - 1, turn, articles_root), _hint_html()


def _ask(text: str, history: list[Turn], store: str, watcher: FolderWatcher | None = None) -> Turn:
    """Answer one question in the light of the earlier, successful turns."""
    earlier = [
        (turn.question, Answer(turn.question, turn.text, turn.citations, abstained=not turn.citations))
        for turn in history
        if not turn.failed
    ]
    try:
        result: Answer = answer(text, store=store, history=earlier)
    except ValueError as error:
        return Turn(text, f"That question cannot be asked: {error}", failed=True)
    except (FileNotFoundError, RuntimeError) as error:
        logger.warning("no answer: %s", error)
        if watcher is not None and watcher.status.building:
            return Turn(text, f"No answer yet: the index is being built. {watcher.describe()} Ask again in a moment.",
                        failed=True)
        return Turn(text, f"No answer: {error}", failed=True)
    return Turn(text, result.text, list(result.citations))


def _reply_markdown(turn: Turn, articles_root: Path) -> str:
    """The answer as Markdown: each numbered quote with its title, date and file; all article text escaped."""
    if not turn.citations:
        return _markdown_text(turn.text)
    parts = []
    for number, citation in enumerate(turn.citations, start=1):
        source = " · ".join(
            _markdown_text(part)
            for part in (citation.title, citation.date, _display_path(citation.path, articles_root))
            if part
        )
        parts.append(f"**[{number}]** {_markdown_text(quoted(citation.quote))}  \n*{source}*")
    return "\n\n".join(parts)


def _citation_radio(turn_number: int, turn: Turn, articles_root: Path) -> gr.Radio:
    """The chooser for one turn's citations, nothing chosen yet."""
    choices = [
        (
            f"[{number}] {_shortened(citation.title)} · {_display_path(citation.path, articles_root)}",
            f"{turn_number}{_CHOICE_SEPARATOR}{number}",
        )
        for number, citation in enumerate(turn.citations, start=1)
    ]
    return gr.Radio(choices=choices, value=None)


def _choose_turn(history: list[Turn], event: gr.SelectData, articles_root: Path):
    """Clicking a message of the chat offers that turn's citations."""
    index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    turn_number = int(index) // 2
    if not 0 <= turn_number < len(history):
        return gr.skip(), gr.skip()
    return _citation_radio(turn_number, history[turn_number], articles_root), _hint_html()


def conversation_markdown(history: list[Turn], articles_root: Path) -> str:
    """The conversation as Markdown: each question, then each quote with its article's title, date, file and
    character offsets (in the text `qa.article_text` gives), or the reason there is no answer. Text is written as it
    stands, but for "<", written "&lt;" so that no Markdown viewer runs article text as HTML."""
    lines = [f"# {TITLE}: conversation", "", f"Exported {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", ""]
    for number, turn in enumerate(history, start=1):
        lines += [f"## {number}. {_inert(turn.question)}", ""]
        if not turn.citations:
            lines += [_inert(turn.text), ""]
        for mark, citation in enumerate(turn.citations, start=1):
            source = " · ".join(part for part in (citation.title, citation.date) if part)
            lines += [
                f"> {_inert(quoted(' '.join(citation.quote.split())))} [{mark}]",
                "",
                f"[{mark}] {_inert(source)} — `{_display_path(citation.path, articles_root)}`, "
                f"characters {citation.start}–{citation.end}",
                "",
            ]
    return "\n".join(lines)


def _inert(text: str) -> str:
    return " ".join(text.split()).replace("<", "&lt;")


def _export(history: list[Turn], articles_root: Path):
    """The download button, holding the conversation as a Markdown file (or disabled while it is empty)."""
    if not history:
        return gr.DownloadButton(value=None, interactive=False)
    folder = Path(tempfile.mkdtemp(prefix="qa-conversation-"))
    target = folder / EXPORT_NAME
    target.write_text(conversation_markdown(history, articles_root), encoding="utf-8")
    return gr.DownloadButton(value=str(target), interactive=True)


def _new_conversation():
    return [], [], gr.Radio(choices=[], value=None), _hint_html()


def _citation_html(history: list[Turn], choice: str | None, articles_root: Path) -> str:
    """The cited article as escaped text, with the quote marked; a note instead when the file has changed."""
    citation = _find_citation(history, choice)
    if citation is None:
        return _hint_html()
    head = " · ".join(
        html.escape(part) for part in (citation.date, _display_path(citation.path, articles_root)) if part
    )
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
        body = (
            html.escape(text[: citation.start])
            + f'<mark id="{QUOTE_MARK_ID}">{html.escape(citation.quote)}</mark>'
            + html.escape(text[citation.end :])
        )
    return f'<div class="qa-article">{header}<div class="qa-article-text">{body}</div></div>'


def _find_citation(history: list[Turn], choice: str | None) -> Citation | None:
    turn_part, _, number_part = (choice or "").partition(_CHOICE_SEPARATOR)
    if not (turn_part.isdigit() and number_part.isdigit()):
        return None
    turn_number, number = int(turn_part), int(number_part)
    if turn_number >= len(history) or not 1 <= number <= len(history[turn_number].citations):
        return None
    return history[turn_number].citations[number - 1]


def _hint_html() -> str:
    return f'<div class="qa-article"><p class="qa-hint">{html.escape(ARTICLE_HINT)}</p></div>'


def save_uploads(files: Sequence[str], articles_root: Path, overwrite: bool) -> tuple[list[str], list[str]]:
    """Copy uploaded files into the articles folder; returns the names saved and a message per file refused."""
    saved, problems = [], []
    for upload in files:
        original = _upload_name(upload)
        try:
            name, data = _checked_upload(Path(upload), original)
            if _store(articles_root, name, data, overwrite):
                saved.append(name)
            else:
                problems.append(f"{name} is already in the articles folder with the same text.")
        except ValueError as error:
            problems.append(f"{original}: {error}")
    return saved, problems


def _upload_name(upload: str | os.PathLike) -> str:
    return Path(str(upload)).name


def _checked_upload(path: Path, original: str) -> tuple[str, bytes]:
    """The safe file name and the bytes of an upload; raises ValueError saying why it is refused."""
    name = safe_file_name(original)
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"{size / 1_000_000:.1f} MB is over the {MAX_UPLOAD_BYTES // 1_000_000} MB limit")
    data = path.read_bytes()
    text_of(data, Path(name).suffix)
    return name, data


def safe_file_name(name: str) -> str:
    """A plain file name for an uploaded article: no folders, no hidden names, no odd characters, an article's suffix.

    Raises ValueError when nothing usable is left or the type is not an article's.
    """
    base = unicodedata.normalize("NFC", re.split(r"[\\/]", name)[-1]).strip()
    stem, suffix = os.path.splitext(base)
    if suffix.lower() not in config.ARTICLE_SUFFIXES:
        raise ValueError(f"only {', '.join(config.ARTICLE_SUFFIXES)} files can be added")
    stem = _UNSAFE_NAME_CHARACTERS.sub("_", stem).strip("._-")[: MAX_NAME_CHARS - len(suffix)]
    if not stem:
        raise ValueError("the file name has no usable characters; rename it")
    return stem + suffix.lower()


def _store(articles_root: Path, name: str, data: bytes, overwrite: bool) -> bool:
    """Write `data` as `articles_root/name` atomically; False when the same text is already there.

    Raises ValueError when a different file of that name exists and `overwrite` is not set.
    """
    target = articles_root / name
    if target.exists():
        if target.read_bytes() == data:
            return False
        if not overwrite:
            raise ValueError(
                f"{name} already exists with different text; tick “Replace an existing file” to overwrite it"
            )
    articles_root.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".upload-", dir=articles_root)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("saved upload %s", target)
    return True


def _rebuild(articles_dir: str, store: str, progress: gr.Progress, notes: list[str]):
    """Update the index incrementally; returns the status message and the refreshed index views."""
    progress(0, desc="Reading articles")
    try:
        report = build_index(
            articles_dir,
            store=store,
            progress=lambda done, total: progress((done, total), desc="Embedding new text", unit="chunks"),
        )
    except Exception as error:  # any failure is reported in the page; the previous index keeps answering
        logger.exception("index build failed")
        message = f"Index update failed: {error}. The previous index is still answering."
        gr.Warning(message)
        return (_status([*notes, message]), *_index_views(store))
    lines = [
        f"Index updated in {report.seconds:.1f} s: {report.added} added, {report.updated} updated, "
        f"{report.removed} removed, {report.unchanged} unchanged; {report.chunks_embedded} chunks embedded.",
        *notes,
        *(f"Skipped {skipped.path}: {skipped.reason}" for skipped in report.skipped),
    ]
    if notes or report.skipped:
        gr.Warning(" ".join(lines[1:]))
    return (_status(lines), *_index_views(store))


def _status(lines: Sequence[str]) -> str:
    return "\n".join(f"- {_markdown_text(line)}" for line in lines)


def _index_views(store: str) -> tuple[str, list[list]]:
    """The index state as Markdown and the table of indexed articles."""
    try:
        summary = describe_index(store=store)
    except (FileNotFoundError, RuntimeError) as error:
        return _markdown_text(f"No index yet ({error}). Add articles below or press “Rebuild index”."), []
    return _summary_markdown(summary), [
        [article.title, article.date or "", article.path, article.chunks] for article in summary.articles
    ]


def _summary_markdown(summary: IndexSummary) -> str:
    facts = [
        ("Model", f"{summary.model} ({summary.dimension} dimensions, on {summary.backend})"),
        ("Built", summary.built_at),
        ("Articles", str(summary.n_articles)),
        ("Chunks", str(summary.n_chunks)),
        ("Folder", summary.articles_dir),
    ]
    return " · ".join(f"**{name}:** {_markdown_text(value)}" for name, value in facts)


def _examples(store: str) -> list[dict[str, str]]:
    """Example questions for the empty chat, made from the titles of the first indexed articles."""
    try:
        articles = describe_index(store=store).articles
    except (FileNotFoundError, RuntimeError):
        return []
    return [{"text": f"What do the articles say about “{_shortened(article.title)}”?"} for article in articles[:EXAMPLE_COUNT]]


def _shortened(title: str) -> str:
    words = title.split()
    return " ".join(words[:SHORT_TITLE_WORDS]) + ("…" if len(words) > SHORT_TITLE_WORDS else "")


def _display_path(path: str, articles_root: Path) -> str:
    """The article's path relative to the articles folder where it lies inside it, else its file name."""
    try:
        return Path(path).resolve().relative_to(articles_root.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _markdown_text(text: str) -> str:
    """`text` escaped so that Markdown shows it literally: no HTML, no links, no formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
