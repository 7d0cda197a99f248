"""Watching: keeping a store in step with the articles folder by itself (an update on start, then one per batch of changes)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from . import config
from .index import build_index
from .memory import return_freed_memory
from .worker import BuildWorker

logger = logging.getLogger(__name__)

QUIET_MS = 800
"""A batch of changes is indexed once the folder has been quiet this long, so a file still being written (several
writes in a row) is read when it is whole, and a copied folder is one build."""
LONGEST_BATCH_MS = 5_000
"""... but a folder that never goes quiet is still indexed this often."""


@dataclass
class WatchStatus:
    """What the watcher is doing, for the page: a build under way (with its progress), the last result or error."""

    building: bool = True
    """True from the start: the watcher's first update is on its way."""
    done: int = 0
    total: int = 0
    message: str = "Starting"
    error: str | None = None


class FolderWatcher:
    """Brings the store up to date with the folder now, then (unless `watch` is off) after every batch of added,
    changed or removed article files, in a background thread. A failed build is logged and kept in `status`; the
    previous index keeps answering. The embedding runs in `worker`, a process of its own, so this one never loads
    the model."""

    def __init__(self, articles_dir: str, store: str, watch: bool = True):
        self.articles_dir = str(Path(config.articles_dir(articles_dir)).resolve())
        self.store = store
        self.watching = watch
        self.status = WatchStatus()
        self.worker = BuildWorker()
        self._thread = threading.Thread(target=self._run, name="qa-watch", daemon=True)

    def start(self) -> FolderWatcher:
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C stops `qa index --watch`)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def _run(self) -> None:
        import watchfiles

        if not self.watching:
            self.update()
            return
        started = False
        for changes in watchfiles.watch(
            self.articles_dir, watch_filter=_article_files, debounce=LONGEST_BATCH_MS, step=QUIET_MS,
            raise_interrupt=False, yield_on_timeout=True, rust_timeout=QUIET_MS,
        ):
            if changes:
                logger.info("%d changes in %s", len(changes), self.articles_dir)
            if changes or not started:  # the first update runs once watching has begun: nothing written during it is missed
                started = True
                self.update()

    def update(self) -> None:
        """One incremental build; its outcome goes to the log and to `status`."""
        status = self.status
        status.building, status.done, status.total, status.message = True, 0, 0, "Reading articles"

        def progress(done: int, total: int) -> None:
            status.done, status.total, status.message = done, total, "Embedding new text"

        try:
            report = build_index(self.articles_dir, store=self.store, progress=progress, worker=self.worker)
        except Exception as error:  # any failure is shown; the previous index keeps answering
            logger.exception("watched build of %s failed", self.articles_dir)
            status.error = f"The last update failed: {error}. The previous index is still answering."
        else:
            status.error = None
            skipped = "".join(f" Skipped {s.path}: {s.reason}." for s in report.skipped)
            status.message = (
                f"Up to date: {report.added} added, {report.updated} updated, {report.removed} removed, "
                f"{report.unchanged} unchanged in the last update ({report.seconds:.1f} s).{skipped}"
            )
        finally:
            status.building = False
            return_freed_memory()  # the build's own working memory

    def describe(self) -> str:
        """One line for the page: the build's progress, or the last outcome."""
        if self.status.building:
            counted = f" ({self.status.done:,} of {self.status.total:,} chunks)" if self.status.total else ""
            return f"Updating the index: {self.status.message}{counted}…"
        return self.status.error or self.status.message


def _article_files(change: object, path: str) -> bool:
    return path.endswith(config.ARTICLE_SUFFIXES) and not Path(path).name.startswith(".")
