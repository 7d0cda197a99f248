"""Build worker: embedding a server's changed articles in a separate long-lived process, so that `qa serve` never
loads PyTorch and what builds leave behind in memory goes with the worker, which is replaced every so many builds."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from .articles import Article
from .store import EmbeddedArticle

if TYPE_CHECKING:
    from .index import Encoder

logger = logging.getLogger(__name__)

BUILDS_PER_WORKER = 50
"""Builds one worker process runs before a fresh one (which loads the model again, about 6 s) takes its place."""
PARENT_CHECK_SECONDS = 1.0
"""How often a worker checks that the process that started it is alive; it exits once it is not (after a SIGKILL)."""
PROGRESS_POLL_SECONDS = 0.2
ATTEMPTS = 2
"""A build whose worker died is run again once in a new one."""

_progress_queue: multiprocessing.Queue | None = None
"""In a worker: where `(done, total)` counts go."""


class BuildWorker:
    """Runs `qa.index`'s embedding step in a worker process, one build at a time. The process starts on the first
    build and keeps the model loaded between builds; a worker that has died (killed, out of memory) is replaced."""

    def __init__(self, builds_per_worker: int = BUILDS_PER_WORKER):
        self.builds_per_worker = builds_per_worker
        self._context = multiprocessing.get_context("spawn")  # a fork would copy the server's threads and index
        self._progress: multiprocessing.Queue = self._context.Queue()
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def embed(self, articles: list[Article], encoder: Encoder, progress: Callable[[int, int], None] | None = None
              ) -> list[EmbeddedArticle]:
        """`qa.index`'s embedding of `articles` with `encoder`, run in the worker; `progress(done, total)` is
        called here as the worker reports. A worker that has died is replaced and the build tried once more."""
        with self._lock:
            for attempt in range(ATTEMPTS):
                try:
                    return self._run(articles, encoder, progress)
                except BrokenProcessPool:
                    logger.warning("the build worker process stopped; starting a new one")
                    self._executor = None
            raise RuntimeError(f"the build worker process stopped {ATTEMPTS} times in a row (killed, or out of "
                               "memory); the next change to the folder starts a new one")

    def _run(self, articles: list[Article], encoder: Encoder, progress: Callable[[int, int], None] | None
             ) -> list[EmbeddedArticle]:
        _drain(self._progress)  # counts the last build sent after it had finished
        future = self._pool().submit(_embed, articles, encoder)
        while True:
            try:
                counts = self._progress.get(timeout=PROGRESS_POLL_SECONDS)
            except queue.Empty:
                if future.done():
                    return future.result()
                continue
            if progress:
                progress(*counts)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=self._context, max_tasks_per_child=self.builds_per_worker,
                initializer=_start_worker, initargs=(self._progress, os.getpid()),
            )
        return self._executor


def _drain(counts: multiprocessing.Queue) -> None:
    try:
        while True:
            counts.get_nowait()
    except queue.Empty:
        pass


def _start_worker(progress: multiprocessing.Queue, parent: int) -> None:
    global _progress_queue
    _progress_queue = progress
    threading.Thread(target=_exit_with_parent, args=(parent,), name="qa-worker-parent", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _embed(articles: list[Article], encoder: Encoder) -> list[EmbeddedArticle]:
    from .index import _embed_articles, _export_for_questions

    def report(done: int, total: int) -> None:
        if _progress_queue is not None:
            _progress_queue.put((done, total))

    embedded = _embed_articles(articles, encoder, report)
    _export_for_questions(encoder)
    return embedded
