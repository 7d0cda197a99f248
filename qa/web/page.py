"""The page: the Gradio layout of the Chat and Articles tabs, the events that join them, and serving it."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import gradio as gr

from .. import catalog, config
from ..embeddings import use_threads_per_run
from ..retrieval import load_index
from ..feeds import DEFAULT_FEEDS_EVERY_MINUTES, FeedFollower
from ..watch import FolderWatcher
from .conversation import (
    CHOICE_SEPARATOR, CITE_LINK_PREFIX, QUOTE_MARK_ID, SHORT_MARK_CLASS, Turn, browser_secret, citation_html, citation_radio,
    conversation_kept, export_button, find_citation, last_citations, new_conversation, respond, turn_citations,
)
from .files import MAX_UPLOAD_BYTES, delete_file, save_uploads, status_markdown, update_index
from .library import (
    ALL_FOLDERS, article_html, catalog_views, examples, index_summary, indexed_articles, scope_choices, scope_markdown,
    where_of,
)
from .sources import FEED_COLUMN_WIDTHS, FEED_HEADERS, feed_rows, fetch_url
from .render import LIBRARY_HINT, TITLE, hint_html, markdown_text

logger = logging.getLogger(__name__)

CHAT_CONCURRENCY = 4
"""Questions answered at once; index builds run one at a time beside them."""
BUILD_CONCURRENCY_ID = "index-build"
WATCH_REFRESH_SECONDS = 2.0
"""How often an open Articles tab shows the watcher's state afresh."""
CONVERSATION_TTL_SECONDS = 24 * 3600
"""A session's conversation is let go after a day without a question (the browser keeps its own copy to restore)."""
CHAT_SESSIONS_KEPT = 200
"""Browser sessions whose state the server keeps, the least recently used let go first. Gradio gives each session
its own copy of every component's settings (about 106 KB for this page by tracemalloc, 200 KB of RSS measured), kept
until it is let go: 200 sessions hold about 40 MB; Gradio's default of 10,000, about 2 GB. A let-go reader keeps the
conversation on screen, and reloading the page restores it."""
GRADIO_CACHE_CLEANUP = (3600, 86400)
"""Every hour, Gradio deletes the files it has served (downloads, uploads) that are over a day old."""
FEEDS_REFRESH_SECONDS = 10.0
"""How often the Articles tab's feed list is read again, to show background updates."""
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CONVERSATION_STORAGE_KEY = "qa-conversation"
"""The browser's local storage key under which the conversation survives a reload of the page."""
CITED_BUTTON_ID = "qa-cited"
TABLE_COLUMN_WIDTHS = ["47%", "18%", "25%", "10%"]
TABLE_HEIGHT = 640
LOCAL_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
LOCAL_MONO_FONTS = ["ui-monospace", "monospace"]
TABLE_HEADERS = ["Title", "Date", "File", "Chunks"]
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
""" + f".qa-article-text mark .{SHORT_MARK_CLASS} {{ background: #ffb703; }}\n"


def build_app(articles_dir: str, store: str, watcher: FolderWatcher | None = None) -> gr.Blocks:
    """The Gradio app: a Chat tab (scope, conversation, the cited article beside it) and an Articles tab to browse,
    add, delete and index articles."""
    articles_root = Path(articles_dir)
    worker = watcher.worker if watcher else None
    with gr.Blocks(title=TITLE, delete_cache=GRADIO_CACHE_CLEANUP) as app:
        turns = gr.State([], time_to_live=CONVERSATION_TTL_SECONDS)
        remembered = gr.BrowserState([], storage_key=CONVERSATION_STORAGE_KEY, secret=browser_secret())
        page_number = gr.State(0)
        page_paths = gr.State([])
        selected_path = gr.State(None)
        gr.Markdown(f"# {TITLE}\nEvery answer is made of verbatim quotes from the articles, each one cited to its place.")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                scope_line = gr.Markdown(scope_markdown(None, 0), elem_id="qa-scope")
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
                            examples=examples(store),
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
                            hint_html(),
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
                        library_view = gr.HTML(hint_html(LIBRARY_HINT), elem_id="qa-library-article")
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
                    label=f"Add articles (.txt or .md, or saved web pages .html/.htm; at most {MAX_UPLOAD_BYTES // 1_000_000} MB each)",
                    file_count="multiple",
                    file_types=list(config.ARTICLE_SUFFIXES),
                    elem_id="qa-upload",
                )
                replace = gr.Checkbox(label="Replace an existing file of the same name", value=False, elem_id="qa-replace")
                with gr.Row():
                    add = gr.Button("Add to index", variant="primary", elem_id="qa-add")
                    rebuild = gr.Button("Rebuild index", elem_id="qa-rebuild")
                with gr.Row(equal_height=True):
                    source_url = gr.Textbox(
                        label="Add a page or a feed by URL",
                        placeholder="https://… a news page (kept as .html) or an RSS/Atom feed (followed)",
                        elem_id="qa-source-url",
                        scale=4,
                    )
                    fetch = gr.Button("Fetch", variant="primary", elem_id="qa-fetch", scale=1)
                status = gr.Markdown(elem_id="qa-status")
                feeds_table = gr.Dataframe(
                    headers=FEED_HEADERS,
                    datatype="str",
                    interactive=False,
                    wrap=True,
                    column_widths=FEED_COLUMN_WIDTHS,
                    label="Feeds followed (new entries are fetched every few minutes and indexed)",
                    elem_id="qa-feeds",
                )

        scope_inputs = [scope_folder, scope_since, scope_until, scope_articles]

        def ask_question(text: str, history: list[Turn], messages: list[dict], folder: str = ALL_FOLDERS,
                         since: str | None = None, until: str | None = None, chosen: list[str] | None = None,
                         saved: list[dict] | None = None):
            scope = (folder, since, until, chosen)
            history, messages = conversation_kept(history, messages, saved, articles_root)
            yield from respond(text, history, messages, store, articles_root, watcher, scope)

        def ask_example(history: list[Turn], messages: list[dict], folder: str, since: str, until: str,
                        chosen: list[str], saved: list[dict], event: gr.SelectData):
            scope = (folder, since, until, chosen)
            history, messages = conversation_kept(history, messages, saved, articles_root)
            yield from respond(event.value.get("text", ""), history, messages, store, articles_root, watcher, scope)

        def show_citation(choice: str | None, history: list[Turn]) -> str:
            return citation_html(history, choice, articles_root)

        def open_cited(target: str, history: list[Turn]):
            choice = target.replace("-", CHOICE_SEPARATOR)
            citation = find_citation(history, choice)
            if citation is None:
                return gr.skip(), gr.skip()
            turn_number = int(choice.partition(CHOICE_SEPARATOR)[0])
            radio = citation_radio(turn_number, history[turn_number], articles_root)
            return gr.Radio(choices=radio.choices, value=choice), citation_html(history, choice, articles_root)

        def choose_turn(history: list[Turn], event: gr.SelectData):
            return turn_citations(history, event, articles_root)

        def restore(saved: list[dict]):
            history, messages = conversation_kept([], [], saved, articles_root)
            return history, messages, last_citations(history, articles_root), hint_html()

        def remember(history: list[Turn]) -> list[dict]:
            return [asdict(turn) for turn in history]

        def describe_scope(*scope: object) -> str:
            try:
                return scope_markdown(where_of(*scope), len(indexed_articles(store)))
            except ValueError as error:
                return markdown_text(f"⚠ {error}. Questions are answered from all articles until it is corrected.")

        def show_page(text: str, sort: str, number: int):
            return catalog_views(store, articles_root, text, sort, number)

        def open_article(paths: list[str], event: gr.SelectData):
            row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            if not 0 <= int(row) < len(paths):
                return gr.skip(), gr.skip(), gr.update(visible=False)
            path = paths[int(row)]
            return path, article_html(articles_root, path, store), gr.update(visible=False)

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
            return gr.update(visible=True), markdown_text(f"Delete {path} from the articles folder? This removes the file.")

        def delete_article(path: str | None, text: str, sort: str, number: int, chosen: list[str] | None,
                           progress=gr.Progress()):
            try:
                done = delete_file(articles_root, path) if path else "Pick an article in the table first."
            except ValueError as error:
                done = str(error)
                gr.Warning(done)
            message = status_markdown([done]) + "\n" + update_index(articles_dir, store, progress, [], worker)
            kept = [chosen_path for chosen_path in chosen or [] if chosen_path != path]
            return message, gr.update(visible=False), None, hint_html(LIBRARY_HINT), *refresh(text, sort, number, kept)

        def add_articles(files: list[str] | None, overwrite: bool, text: str, sort: str, number: int,
                         chosen: list[str] | None, progress=gr.Progress()):
            saved, problems = save_uploads(files or [], articles_root, overwrite)
            if not saved:
                message = problems or ["Choose one or more .txt, .md or .html files first."]
                gr.Warning(" ".join(message))
                return status_markdown(message), *refresh(text, sort, number, chosen), None
            return update_index(articles_dir, store, progress, problems, worker), *refresh(text, sort, number, chosen), None

        def add_source(url: str, text: str, sort: str, number: int, chosen: list[str] | None,
                       progress=gr.Progress()):
            progress(0, desc="Fetching")
            outcome, added = fetch_url(url, articles_root)
            if not added:
                gr.Warning(outcome)
                return status_markdown([outcome]), url, feed_rows(articles_root), *refresh(text, sort, number, chosen)
            message = update_index(articles_dir, store, progress, [outcome], worker)
            return message, "", feed_rows(articles_root), *refresh(text, sort, number, chosen)

        def rebuild_index(text: str, sort: str, number: int, chosen: list[str] | None, progress=gr.Progress()):
            return update_index(articles_dir, store, progress, [], worker), *refresh(text, sort, number, chosen)

        def export(history: list[Turn]):
            return export_button(history, articles_root)

        def refresh(text: str, sort: str, number: int, chosen: list[str] | None):
            return (
                index_summary(store),
                *catalog_views(store, articles_root, text, sort, number),
                *scope_choices(store, chosen or []),
            )

        chat_inputs = [question, turns, chatbot, *scope_inputs, remembered]
        chat_outputs = [question, turns, chatbot, citation_choice, article_view]
        for event in (ask.click, question.submit):
            event(ask_question, chat_inputs, chat_outputs).then(export, [turns], [download]).then(
                remember, [turns], [remembered]
            )
        chatbot.example_select(ask_example, [turns, chatbot, *scope_inputs, remembered], chat_outputs).then(
            export, [turns], [download]
        ).then(remember, [turns], [remembered])
        chatbot.select(choose_turn, [turns], [citation_choice])
        citation_choice.select(show_citation, [citation_choice, turns], [article_view])
        open_cited_button.click(open_cited, [cited, turns], [citation_choice, article_view], js=CITED_JS, queue=False)
        for clear in (new_chat.click, chatbot.clear):
            clear(new_conversation, None, [turns, chatbot, citation_choice, article_view], queue=False).then(
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
        for event in (fetch.click, source_url.submit):
            event(add_source, [source_url, *view_inputs], [status, source_url, feeds_table, *views],
                  concurrency_limit=1, concurrency_id=BUILD_CONCURRENCY_ID)
        app.load(lambda: feed_rows(articles_root), None, [feeds_table], queue=False)
        gr.Timer(FEEDS_REFRESH_SECONDS).tick(lambda: feed_rows(articles_root), None, [feeds_table], queue=False)
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
    feeds_every: float = DEFAULT_FEEDS_EVERY_MINUTES,
) -> None:
    """Serve the web chat until interrupted, answering from `store` (an index folder, `milvus:PATH` or a Milvus
    server's URL); `auth` is a (user, password) login that Gradio asks for. The index is brought up to date with the
    articles folder in the background on start and, with `watch`, whenever files in it are added, changed or removed.
    The folder's feeds are updated every `feeds_every` minutes (0: never)."""
    if host not in LOCAL_HOSTS and auth is None:
        logger.warning("serving on %s without a login: anyone who can reach this address can use it", host)
    use_threads_per_run(1)
    watcher = FolderWatcher(articles_dir, store, watch=watch).start()
    if feeds_every > 0:
        FeedFollower(articles_dir, feeds_every).start()
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
        state_session_capacity=CHAT_SESSIONS_KEPT,
    )


def _warm_up(store: str) -> None:
    """Load the index and the model before the first reader asks, so the first answer is as quick as the rest."""
    try:
        load_index(store=store).encode_queries(["warm up"])
    except (FileNotFoundError, RuntimeError) as error:
        logger.warning("the chat starts without an index: %s", error)
