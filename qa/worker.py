"""Build worker: embedding a server's changed articles in a separate long-lived process, so that `qa serve` never
loads PyTorch and what builds leave behind in memory goes with the worker, which is replaced every so many builds
or chunks."""

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
CHUNKS_PER_WORKER = 1000
"""Chunks one worker process embeds before a fresh one takes its place. Measured on 500 BBC stories (2,700 chunks)
embedded three times in one process: 744 MB with the model loaded, then 924, 1,104 and 1,105 MB."""
PARENT_CHECK_SECONDS = 1.0
"""How often a worker checks that the process that started it is alive; it exits once it is not (after a SIGKILL)."""
PROGRESS_POLL_SECONDS = 0.2
ATTEMPTS = 2
"""A build whose worker died is run again once in a new one."""

_progress_queue: multiprocessing.Queue | None = None
"""In a worker: where `(done, total)` counts go."""


class BuildWorker:
    """Runs `qa.index`'s embedding step in a worker process, one build at a time. The process starts on the first
    build and keeps the model loaded between builds. It is replaced after `builds_per_worker` builds or
    `chunks_per_worker` chunks, and when it has died (killed, out of memory)."""

    def __init__(self, builds_per_worker: int = BUILDS_PER_WORKER, chunks_per_worker: int = CHUNKS_PER_WORKER):
        self.builds_per_worker = builds_per_worker
        self.chunks_per_worker = chunks_per_worker
        self._chunks_embedded = 0
        self._context = multiprocessing.get_context("spawn")  # a fork would copy the server's threads and index
        self._progress: multiprocessing.Queue = self._context.Queue()
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def embed(self, articles: list[Article], encoder: Encoder, progress: Callable[[int, int], None] | None = None
              ) -> list[EmbeddedArticle]:
        """`qa.index.embed_for_index(articles, encoder)`, run in the worker; `progress(done, total)` is
        called here as the worker reports. A worker that has died is replaced and the build tried once more."""
        with self._lock:
            for _ in range(ATTEMPTS):
                try:
                    embedded = self._run(articles, encoder, progress)
                except BrokenProcessPool:
                    logger.warning("the build worker process stopped; starting a new one")
                    self._retire()
                    continue
                self._chunks_embedded += sum(len(item.chunks) for item in embedded)
                if self._chunks_embedded >= self.chunks_per_worker:
                    self._retire()
                return embedded
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

    def _retire(self) -> None:
        """Let the worker process go (it exits once idle); the next build starts a new one."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._executor = None
        self._chunks_embedded = 0

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
    from .index import embed_for_index

    def report(done: int, total: int) -> None:
        if _progress_queue is not None:
            _progress_queue.put((done, total))

    return embed_for_index(articles, encoder, report)
