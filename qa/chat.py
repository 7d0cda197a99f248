"""The web chat: ask about the articles, read each cited quote in its article, and add articles to the index."""

from __future__ import annotations

import html
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: Gradio must not phone home

import gradio as gr  # noqa: E402

from . import Answer, Citation, IndexedArticle, IndexSummary, answer, build_index, catalog, config, describe_index  # noqa: E402
from .answers import quoted  # noqa: E402
from .articles import MAX_ARTICLE_BYTES, article_text, text_of  # noqa: E402
from .retrieval import load_index  # noqa: E402
from .scope import Scope  # noqa: E402
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
ARTICLE_HINT = "Click a citation number in an answer to read the quote here, highlighted in its article."
LIBRARY_HINT = "Click an article in the table to read it here."
ALL_FOLDERS = "All folders"
CONVERSATION_STORAGE_KEY = "qa-conversation"
"""The browser's local storage key under which the conversation survives a reload of the page."""
CITED_BUTTON_ID = "qa-cited"
CITE_LINK_PREFIX = "#qa-cite-"
TABLE_COLUMN_WIDTHS = ["47%", "18%", "25%", "10%"]
TABLE_HEIGHT = 640
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
CITE_LINK_JS = f"""
() => {{
  document.addEventListener('click', (event) => {{
    const link = event.target.closest && event.target.closest('a[href^="{CITE_LINK_PREFIX}"]');
    if (!link) return;
    event.preventDefault();
    event.stopPropagation();
    window.qaCited = link.getAttribute('href').slice({len(CITE_LINK_PREFIX)});
    document.getElementById('{CITED_BUTTON_ID}').click();
  }}, true);
}}
"""
"""Clicking a citation number in an answer opens that citation: the link's turn and number go to a hidden button's
event, which reads them with CITED_JS."""
CITED_JS = "(target, history) => [window.qaCited || '', history]"
CSS = """
.qa-article { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 12px; }
.qa-article-head { font-size: 0.95em; margin-bottom: 8px; }
.qa-article-text { position: relative; white-space: pre-wrap; overflow-y: auto; max-height: 560px;
  font-family: var(--font); line-height: 1.5; }
.qa-article-text mark { background: #ffe066; color: #000; padding: 1px 0; }
.qa-hint { color: var(--body-text-color-subdued); }
#qa-chat a[href^="#qa-cite-"] { text-decoration: none; font-weight: bold; }
"""


@dataclass
class Turn:
    """One question of a conversation and what came back: an answer, or the message saying why there is none."""

    question: str
    text: str
    citations: list[Citation] = field(default_factory=list)
    failed: bool = False


def build_app(articles_dir: str, store: str, watcher: FolderWatcher | None = None) -> gr.Blocks:
    """The Gradio app: a Chat tab (scope, conversation, the cited article beside it) and an Articles tab to browse,
    add, delete and index articles."""
    articles_root = Path(articles_dir)
    with gr.Blocks(title=TITLE) as app:
        turns = gr.State([])
        remembered = gr.BrowserState([], storage_key=CONVERSATION_STORAGE_KEY)
        page_number = gr.State(0)
        page_paths = gr.State([])
        selected_path = gr.State(None)
        gr.Markdown(f"# {TITLE}\nEvery answer is made of verbatim quotes from the articles, each one cited to its place.")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                scope_line = gr.Markdown(_scope_markdown(None, 0), elem_id="qa-scope")
                with gr.Accordion("Limit the articles answered from", open=False, elem_id="qa-scope-controls"):
                    with gr.Row():
                        scope_folder = gr.Dropdown(
                            [ALL_FOLDERS], value=ALL_FOLDERS, label="Folder", elem_id="qa-scope-folder", scale=2
                        )
                        scope_since = gr.Textbox(label="From (YYYY-MM-DD)", placeholder="2024-11-01", elem_id="qa-scope-since")
                        scope_until = gr.Textbox(label="To (YYYY-MM-DD)", placeholder="2024-11-30", elem_id="qa-scope-until")
                    with gr.Row():
                        scope_articles = gr.Dropdown(
                            [],
                            value=[],
                            multiselect=True,
                            label="Only these articles (or pick them in the Articles tab)",
                            elem_id="qa-scope-articles",
                            scale=5,
                        )
                        clear_scope = gr.Button("Answer from all articles", size="sm", elem_id="qa-scope-clear", scale=1)
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
                            label="Citations: click [1], [2], … in an answer, or pick one here, to read it in its article",
                            choices=[],
                            elem_id="qa-citations",
                        )
                        with gr.Row():
                            new_chat = gr.Button("New conversation", size="sm", elem_id="qa-new-chat")
                            download = gr.DownloadButton(
                                "Download conversation (Markdown)", size="sm", elem_id="qa-download", interactive=False
                            )
                        cited = gr.Textbox(visible=False)
                        open_cited_button = gr.Button(visible="hidden", elem_id=CITED_BUTTON_ID)
                    with gr.Column(scale=2):
                        article_view = gr.HTML(
                            _hint_html(),
                            elem_id="qa-article",
                            js_on_load=SCROLL_TO_QUOTE_JS,
                        )
            with gr.Tab("Articles", id="articles"):
                index_state = gr.Markdown(elem_id="qa-index-state")
                watch_state = gr.Markdown(elem_id="qa-watch-state", visible=watcher is not None)
                with gr.Row():
                    with gr.Column(scale=3):
                        with gr.Row():
                            search = gr.Textbox(
                                label="Search titles and text",
                                placeholder="Words that must all appear, e.g. Lima summit",
                                elem_id="qa-article-search",
                                scale=3,
                            )
                            order = gr.Dropdown(
                                list(catalog.SORT_ORDERS), value=catalog.NEWEST_FIRST, label="Sort", elem_id="qa-article-sort"
                            )
                        articles_table = gr.Dataframe(
                            headers=TABLE_HEADERS,
                            datatype="str",
                            interactive=False,
                            wrap=True,
                            column_widths=TABLE_COLUMN_WIDTHS,
                            max_height=TABLE_HEIGHT,
                            elem_id="qa-articles",
                        )
                        with gr.Row():
                            previous_page = gr.Button("← Previous", size="sm", elem_id="qa-previous-page")
                            page_line = gr.Markdown(elem_id="qa-page")
                            next_page = gr.Button("Next →", size="sm", elem_id="qa-next-page")
                    with gr.Column(scale=2):
                        library_view = gr.HTML(_hint_html(LIBRARY_HINT), elem_id="qa-library-article")
                        with gr.Row():
                            only_this = gr.Button(
                                "Add to “only these articles”", size="sm", elem_id="qa-scope-add"
                            )
                            delete = gr.Button("Delete from folder…", size="sm", variant="stop", elem_id="qa-delete")
                        with gr.Row(visible=False) as confirm_row:
                            confirm_text = gr.Markdown(elem_id="qa-delete-question")
                            confirm_delete = gr.Button("Delete", size="sm", variant="stop", elem_id="qa-delete-confirm")
                            cancel_delete = gr.Button("Keep it", size="sm", elem_id="qa-delete-cancel")
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

        scope_inputs = [scope_folder, scope_since, scope_until, scope_articles]

        def ask_question(text: str, history: list[Turn], messages: list[dict], folder: str = ALL_FOLDERS,
                         since: str | None = None, until: str | None = None, chosen: list[str] | None = None):
            scope = (folder, since, until, chosen)
            yield from _respond(text, history, messages, store, articles_root, watcher, scope)

        def ask_example(history: list[Turn], messages: list[dict], folder: str, since: str, until: str,
                        chosen: list[str], event: gr.SelectData):
            scope = (folder, since, until, chosen)
            yield from _respond(event.value.get("text", ""), history, messages, store, articles_root, watcher, scope)

        def show_citation(choice: str | None, history: list[Turn]) -> str:
            return _citation_html(history, choice, articles_root)

        def open_cited(target: str, history: list[Turn]):
            choice = target.replace("-", _CHOICE_SEPARATOR)
            citation = _find_citation(history, choice)
            if citation is None:
                return gr.skip(), gr.skip()
            turn_number = int(choice.partition(_CHOICE_SEPARATOR)[0])
            radio = _citation_radio(turn_number, history[turn_number], articles_root)
            return gr.Radio(choices=radio.choices, value=choice), _citation_html(history, choice, articles_root)

        def choose_turn(history: list[Turn], event: gr.SelectData):
            return _choose_turn(history, event, articles_root)

        def restore(saved: list[dict]):
            history = _turns_from_json(saved)
            return history, _messages(history, articles_root), _last_citations(history, articles_root), _hint_html()

        def remember(history: list[Turn]) -> list[dict]:
            return [asdict(turn) for turn in history]

        def describe_scope(*scope: object) -> str:
            try:
                return _scope_markdown(_where(*scope), len(_indexed_articles(store)))
            except ValueError as error:
                return _markdown_text(f"⚠ {error}. Questions are answered from all articles until it is corrected.")

        def show_page(text: str, sort: str, number: int):
            return _catalog_views(store, articles_root, text, sort, number)

        def open_article(paths: list[str], event: gr.SelectData):
            row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            if not 0 <= int(row) < len(paths):
                return gr.skip(), gr.skip(), gr.update(visible=False)
            path = paths[int(row)]
            return path, _article_html(articles_root, path, store), gr.update(visible=False)

        def choose_only(path: str | None, chosen: list[str] | None):
            if not path:
                gr.Warning("Pick an article in the table first.")
                return gr.skip()
            gr.Info(f"Questions are now answered only from the chosen articles, {path} among them.")
            return sorted({*(chosen or []), path})

        def ask_delete(path: str | None):
            if not path:
                gr.Warning("Pick an article in the table first.")
                return gr.update(visible=False), gr.skip()
            return gr.update(visible=True), _markdown_text(f"Delete {path} from the articles folder? This removes the file.")

        def delete_article(path: str | None, text: str, sort: str, number: int, chosen: list[str] | None,
                           progress=gr.Progress()):
            try:
                done = delete_file(articles_root, path) if path else "Pick an article in the table first."
            except ValueError as error:
                done = str(error)
                gr.Warning(done)
            message = _status([done]) + "\n" + _rebuild(articles_dir, store, progress, [])
            kept = [chosen_path for chosen_path in chosen or [] if chosen_path != path]
            return message, gr.update(visible=False), None, _hint_html(LIBRARY_HINT), *refresh(text, sort, number, kept)

        def add_articles(files: list[str] | None, overwrite: bool, text: str, sort: str, number: int,
                         chosen: list[str] | None, progress=gr.Progress()):
            saved, problems = save_uploads(files or [], articles_root, overwrite)
            if not saved:
                message = problems or ["Choose one or more .txt, .md or .html files first."]
                gr.Warning(" ".join(message))
                return _status(message), *refresh(text, sort, number, chosen), None
            return _rebuild(articles_dir, store, progress, problems), *refresh(text, sort, number, chosen), None

        def rebuild_index(text: str, sort: str, number: int, chosen: list[str] | None, progress=gr.Progress()):
            return _rebuild(articles_dir, store, progress, []), *refresh(text, sort, number, chosen)

        def export(history: list[Turn]):
            return _export(history, articles_root)

        def refresh(text: str, sort: str, number: int, chosen: list[str] | None):
            return (
                _index_summary(store),
                *_catalog_views(store, articles_root, text, sort, number),
                *_scope_choices(store, chosen or []),
            )

        chat_inputs = [question, turns, chatbot, *scope_inputs]
        chat_outputs = [question, turns, chatbot, citation_choice, article_view]
        for event in (ask.click, question.submit):
            event(ask_question, chat_inputs, chat_outputs).then(export, [turns], [download]).then(
                remember, [turns], [remembered]
            )
        chatbot.example_select(ask_example, [turns, chatbot, *scope_inputs], chat_outputs).then(
            export, [turns], [download]
        ).then(remember, [turns], [remembered])
        chatbot.select(choose_turn, [turns], [citation_choice])
        citation_choice.select(show_citation, [citation_choice, turns], [article_view])
        open_cited_button.click(open_cited, [cited, turns], [citation_choice, article_view], js=CITED_JS, queue=False)
        for clear in (new_chat.click, chatbot.clear):
            clear(_new_conversation, None, [turns, chatbot, citation_choice, article_view], queue=False).then(
                export, [turns], [download], queue=False
            ).then(remember, [turns], [remembered], queue=False)
        for control in scope_inputs:
            control.change(describe_scope, scope_inputs, [scope_line], queue=False)
        clear_scope.click(lambda: (ALL_FOLDERS, "", "", []), None, scope_inputs, queue=False)

        catalog_outputs = [articles_table, page_line, page_number, page_paths]
        search.change(lambda text, sort: show_page(text, sort, 0), [search, order], catalog_outputs,
                     trigger_mode="always_last")
        order.change(lambda text, sort: show_page(text, sort, 0), [search, order], catalog_outputs)
        previous_page.click(lambda text, sort, n: show_page(text, sort, n - 1), [search, order, page_number],
                            catalog_outputs)
        next_page.click(lambda text, sort, n: show_page(text, sort, n + 1), [search, order, page_number],
                        catalog_outputs)
        articles_table.select(open_article, [page_paths], [selected_path, library_view, confirm_row])
        only_this.click(choose_only, [selected_path, scope_articles], [scope_articles])
        delete.click(ask_delete, [selected_path], [confirm_row, confirm_text], queue=False)
        cancel_delete.click(lambda: gr.update(visible=False), None, [confirm_row], queue=False)

        views = [index_state, *catalog_outputs, scope_folder, scope_articles]
        view_inputs = [search, order, page_number, scope_articles]
        confirm_delete.click(
            delete_article,
            [selected_path, *view_inputs],
            [status, confirm_row, selected_path, library_view, *views],
            concurrency_limit=1,
            concurrency_id=BUILD_CONCURRENCY_ID,
        )
        add.click(
            add_articles,
            [uploads, replace, *view_inputs],
            [status, *views, uploads],
            concurrency_limit=1,
            concurrency_id=BUILD_CONCURRENCY_ID,
        )
        rebuild.click(
            rebuild_index, view_inputs, [status, *views], concurrency_limit=1, concurrency_id=BUILD_CONCURRENCY_ID
        )
        app.load(refresh, view_inputs, views).then(
            describe_scope, scope_inputs, [scope_line]
        )
        app.load(restore, [remembered], [turns, chatbot, citation_choice, article_view]).then(
            export, [turns], [download]
        )
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
        js=CITE_LINK_JS,
        theme=gr.themes.Default(font=LOCAL_FONTS, font_mono=LOCAL_MONO_FONTS),
        show_error=True,
        footer_links=[],
    )


def _warm_up(store: str) -> None:
    """Load the index and the model before the first reader asks, so the first answer is as quick as the rest."""
    try:
        load_index(store=store).encode_queries(["warm up"])
    except (FileNotFoundError, RuntimeError) as error:
        logger.warning("the chat starts without an index: %s", error)


def _respond(
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
    pending = [*messages, {"role": "user", "content": _markdown_text(text)}]
    yield "", history, [*pending, {"role": "assistant", "content": "Searching the articles…"}], gr.skip(), gr.skip()
    try:
        where = _where(*scope)
    except ValueError as error:
        turn = Turn(text, f"That scope cannot be used: {error}.", failed=True)
    else:
        turn = _ask(text, history, store, watcher, where)
    history = [*history, turn]
    reply = {"role": "assistant", "content": _reply_markdown(turn, len(history) - 1, articles_root)}
    yield "", history, [*pending, reply], _citation_radio(len(history) - 1, turn, articles_root), _hint_html()


def _ask(
    text: str, history: list[Turn], store: str, watcher: FolderWatcher | None = None, where: dict | None = None
) -> Turn:
    """Answer one question from the articles `where` admits, in the light of the earlier, successful turns."""
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
        logger.warning("no answer: %s", error)
        if watcher is not None and watcher.status.building:
            return Turn(text, f"No answer yet: the index is being built. {watcher.describe()} Ask again in a moment.",
                        failed=True)
        return Turn(text, f"No answer: {error}", failed=True)
    return Turn(text, result.text, list(result.citations))


def _reply_markdown(turn: Turn, turn_number: int, articles_root: Path) -> str:
    """The answer as Markdown: each numbered quote with its title, date and file, the number a link that opens the
    quote in its article; all article text escaped."""
    if not turn.citations:
        return _markdown_text(turn.text)
    parts = []
    for number, citation in enumerate(turn.citations, start=1):
        source = " · ".join(
            _markdown_text(part)
            for part in (citation.title, citation.date, _display_path(citation.path, articles_root))
            if part
        )
        link = f"{CITE_LINK_PREFIX}{turn_number}-{number}"
        parts.append(f"[**\\[{number}\\]**]({link}) {_markdown_text(quoted(citation.quote))}  \n*{source}*")
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
        return gr.skip()
    return _citation_radio(turn_number, history[turn_number], articles_root)


def _messages(history: list[Turn], articles_root: Path) -> list[dict]:
    """The chat's messages for a whole conversation, as they were first shown."""
    messages = []
    for number, turn in enumerate(history):
        messages += [
            {"role": "user", "content": _markdown_text(turn.question)},
            {"role": "assistant", "content": _reply_markdown(turn, number, articles_root)},
        ]
    return messages


def _last_citations(history: list[Turn], articles_root: Path) -> gr.Radio:
    if not history:
        return gr.Radio(choices=[], value=None)
    return _citation_radio(len(history) - 1, history[-1], articles_root)


def _turns_from_json(saved: object) -> list[Turn]:
    """The conversation kept in the browser, or none when what is kept is not one (an older or damaged copy)."""
    try:
        return [
            Turn(
                str(turn["question"]),
                str(turn["text"]),
                [Citation(**citation) for citation in turn["citations"]],
                bool(turn["failed"]),
            )
            for turn in saved or []
        ]
    except (KeyError, TypeError) as error:
        logger.info("the conversation kept in the browser cannot be read (%s); starting afresh", error)
        return []


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


def _where(folder: object, since: object, until: object, articles: object) -> dict | None:
    """The `where=` of the chat's scope controls, or None for every article; raises ValueError saying what is wrong."""
    where = {
        "folder": folder if folder and folder != ALL_FOLDERS else None,
        "since": str(since or "").strip() or None,
        "until": str(until or "").strip() or None,
        "articles": list(articles) if articles else None,
    }
    where = {key: value for key, value in where.items() if value}
    Scope.of(where, ".")
    return where or None


def _scope_markdown(where: dict | None, article_count: int) -> str:
    """The line above the chat that says which articles questions are answered from."""
    if not where:
        return f"**Answering from:** all {article_count:,} articles." if article_count else "**Answering from:** all articles."
    parts = []
    if where.get("folder"):
        parts.append(f"the folder {where['folder']}")
    if where.get("since") and where.get("until"):
        parts.append(f"dated {where['since']} to {where['until']}")
    elif where.get("since") or where.get("until"):
        parts.append(f"dated from {where['since']}" if where.get("since") else f"dated up to {where['until']}")
    if where.get("articles"):
        count = len(where["articles"])
        parts.append(f"{count} chosen article{'s' if count != 1 else ''} ({', '.join(where['articles'][:3])}"
                     f"{', …' if count > 3 else ''})")
    return "**Answering from:** " + _markdown_text("articles in " + "; ".join(parts) + ".")


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


def _article_html(articles_root: Path, path: str, store: str) -> str:
    """An indexed article as escaped text under its title, date and file, for the Articles tab."""
    record = next((article for article in _indexed_articles(store) if article.path == path), None)
    try:
        text = article_text(articles_root / path)
    except (OSError, ValueError) as error:
        return _hint_html(f"{path} cannot be read: {error}. Press “Rebuild index” to bring the index up to date.")
    title = record.title if record else path
    head = " · ".join(html.escape(part) for part in (record.date if record else None, path) if part)
    header = f'<div class="qa-article-head"><strong>{html.escape(title)}</strong><br>{head}</div>'
    return f'<div class="qa-article">{header}<div class="qa-article-text">{html.escape(text)}</div></div>'


def delete_file(articles_root: Path, path: str) -> str:
    """Delete the article `path` (relative to the articles folder) from disk; returns what was done, in a line.

    Raises ValueError when the path leads out of the articles folder."""
    target = (articles_root / path).resolve()
    if not target.is_relative_to(articles_root.resolve()):
        raise ValueError(f"{path} is not in the articles folder")
    try:
        target.unlink()
    except FileNotFoundError:
        return f"{path} was already gone from the articles folder."
    logger.info("deleted %s", target)
    return f"Deleted {path} from the articles folder."


def _hint_html(hint: str = ARTICLE_HINT) -> str:
    return f'<div class="qa-article"><p class="qa-hint">{html.escape(hint)}</p></div>'


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


def _rebuild(articles_dir: str, store: str, progress: gr.Progress, notes: list[str]) -> str:
    """Update the index incrementally; returns the status message."""
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
        return _status([*notes, message])
    lines = [
        f"Index updated in {report.seconds:.1f} s: {report.added} added, {report.updated} updated, "
        f"{report.removed} removed, {report.unchanged} unchanged; {report.chunks_embedded} chunks embedded.",
        *notes,
        *(f"Skipped {skipped.path}: {skipped.reason}" for skipped in report.skipped),
    ]
    if notes or report.skipped:
        gr.Warning(" ".join(lines[1:]))
    return _status(lines)


def _status(lines: Sequence[str]) -> str:
    return "\n".join(f"- {_markdown_text(line)}" for line in lines)


def _index_summary(store: str) -> str:
    """The index state as Markdown."""
    try:
        return _summary_markdown(describe_index(store=store))
    except (FileNotFoundError, RuntimeError) as error:
        return _markdown_text(f"No index yet ({error}). Add articles below or press “Rebuild index”.")


def _indexed_articles(store: str) -> list[IndexedArticle]:
    try:
        return describe_index(store=store).articles
    except (FileNotFoundError, RuntimeError):
        return []


def _catalog_views(store: str, articles_root: Path, search: str, order: str, page: int):
    """The Articles table's rows for one page of a search, the line saying where it stands, the page number and the
    paths of its rows (in the table's order)."""
    found = catalog.browse(_indexed_articles(store), articles_root, search or "", order or catalog.NEWEST_FIRST, page)
    rows = [[article.title, article.date or "", article.path, article.chunks] for article in found.articles]
    return rows, _markdown_text(found.describe()), found.page, [article.path for article in found.articles]


def _scope_choices(store: str, chosen: list[str]):
    """The scope's folder and article choosers, offering what the index holds now."""
    articles = _indexed_articles(store)
    paths = {article.path for article in articles}
    return (
        gr.Dropdown(choices=[ALL_FOLDERS, *catalog.folders(articles)]),
        gr.Dropdown(
            choices=[(f"{_shortened(article.title)} · {article.path}", article.path) for article in articles],
            value=[path for path in chosen if path in paths],
        ),
    )


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
    return [
        {"text": f"What do the articles say about “{_shortened(article.title)}”?"}
        for article in _indexed_articles(store)[:EXAMPLE_COUNT]
    ]


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
