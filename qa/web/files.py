"""Changing the articles folder from the page: uploads checked and saved, deletions, and the index update after them."""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from .. import build_index, config
from ..articles import MAX_ARTICLE_BYTES, text_of, write_atomically
from ..worker import BuildWorker
from .render import markdown_text

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = MAX_ARTICLE_BYTES
MAX_NAME_CHARS = 120
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^\w.\-]+")


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
    write_atomically(target, data)
    logger.info("saved upload %s", target)
    return True


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


def update_index(articles_dir: str, store: str, progress: gr.Progress, notes: list[str],
                 worker: BuildWorker | None = None) -> str:
    """Update the index incrementally (embedding in `worker`'s process, if given); returns the status message."""
    progress(0, desc="Reading articles")
    try:
        report = build_index(
            articles_dir,
            store=store,
            progress=lambda done, total: progress((done, total), desc="Embedding new text", unit="chunks"),
            worker=worker,
        )
    except Exception as error:  # any failure is reported in the page; the previous index keeps answering
        logger.exception("index build failed")
        message = f"Index update failed: {error}. The previous index is still answering."
        gr.Warning(message)
        return status_markdown([*notes, message])
    lines = [
        f"Index updated in {report.seconds:.1f} s: {report.added} added, {report.updated} updated, "
        f"{report.removed} removed, {report.unchanged} unchanged; {report.chunks_embedded} chunks embedded.",
        *notes,
        *(f"Skipped {skipped.path}: {skipped.reason}" for skipped in report.skipped),
    ]
    if notes or report.skipped:
        gr.Warning(" ".join(lines[1:]))
    return status_markdown(lines)


def status_markdown(lines: Sequence[str]) -> str:
    return "\n".join(f"- {markdown_text(line)}" for line in lines)
