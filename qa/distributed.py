"""Distributed building: a build's changed articles chunked and embedded by Ray Data actors, on this machine or a cluster."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from .articles import Article
from .progress import progress_bar
from .store import EmbeddedArticle

logger = logging.getLogger(__name__)

LOCAL = "local"
"""`--ray` without an address: a Ray instance started on this machine for the build, and stopped after it."""
DEFAULT_ARTICLES_PER_BATCH = 48
"""Some 280 chunks of BBC-sized stories, about what a plain build encodes at a time (qa.index.EMBED_BATCH_CHUNKS):
the workers embed more chunks a CPU-second in larger calls (12.3 against 11.8 with 16 articles, all 2,225 BBC stories)."""
DEFAULT_CPUS_PER_WORKER = 1
LOCAL_START_ATTEMPTS = 3


@dataclass(frozen=True)
class RaySettings:
    """Where and how a build embeds on Ray: `address` is LOCAL or a cluster's (`ray://HOST:10001`, or `auto` on a
    cluster's node); `workers` actors (default: one per CPU Ray sees), each loading the model once and running it on
    `cpus_per_worker` threads; `articles_per_batch` articles sent to an actor at a time."""

    address: str = LOCAL
    workers: int | None = None
    articles_per_batch: int = DEFAULT_ARTICLES_PER_BATCH
    cpus_per_worker: int = DEFAULT_CPUS_PER_WORKER

    def __post_init__(self):
        for name in ("workers", "articles_per_batch", "cpus_per_worker"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Ray's {name.replace('_', ' ')} must be at least 1, not {value}")


class _Embedder:
    """A Ray Data actor: the model loaded once, on `threads` threads; each batch of articles chunked and embedded."""

    def __init__(self, model: str, backend: str, threads: int):
        import torch

        from .embeddings import get_embedder, use_threads_per_run
        from .index import Encoder

        torch.set_num_threads(threads)
        use_threads_per_run(threads)
        self.encoder = Encoder(model, backend)
        get_embedder(model, backend)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .index import embed_articles

        articles = [_article(row) for row in batch["article"]]
        return {"embedded": _objects(embed_articles(articles, self.encoder, None))}


def embed_on_ray(articles: list[Article], model: str, backend: str, settings: RaySettings) -> Iterator[EmbeddedArticle]:
    """`articles` embedded as `qa.index.embed_articles` embeds them, by Ray Data actors, yielded in the order given as
    their batches finish, so that the store can write them while the rest are embedded. A worker that dies is
    replaced and its batch run again by Ray. A local Ray instance started here stops when the iteration ends or the
    iterator is closed."""
    if not articles:
        return
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        _start(ray, settings.address)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context.enable_progress_bars = False
        workers = settings.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // settings.cpus_per_worker)
        logger.info("embedding %d articles on Ray (%s): %d workers of %d CPU", len(articles), settings.address,
                    workers, settings.cpus_per_worker)
        dataset = ray.data.from_items([{"article": _row(article)} for article in articles]).map_batches(
            _Embedder,
            fn_constructor_args=(model, backend, settings.cpus_per_worker),
            batch_size=settings.articles_per_batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=settings.cpus_per_worker,
        )
        with progress_bar(len(articles), "embedding articles on Ray", "article") as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                yield from batch["embedded"]
                bar.update(len(batch["embedded"]))
    finally:
        if started_here:
            ray.shutdown()


def _start(ray, address: str) -> None:
    """Start or join Ray. A local start is tried LOCAL_START_ATTEMPTS times: on a busy machine Ray's own processes
    are sometimes slower to come up than it waits for."""
    attempts = LOCAL_START_ATTEMPTS if address == LOCAL else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            return
        except Exception as error:  # Ray raises a bare Exception (or ConnectionError) when it cannot start or join
            ray.shutdown()
            if attempt == attempts:
                where = "on this machine" if address == LOCAL else f"at {address} (is it a Ray {ray.__version__} cluster?)"
                raise RuntimeError(f"Ray did not start {where}: {error}; try again, or build without --ray") from None
            logger.warning("Ray did not start (%s); trying again", error)


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise RuntimeError("building on Ray needs the ray extra: pip install 'qa[ray]' (make installs it)") from None
    return ray


def _row(article: Article) -> str:
    """An article as Ray Data carries it (Arrow holds strings, not Python objects)."""
    return json.dumps(asdict(article))


def _article(row: str) -> Article:
    fields = json.loads(row)
    return Article(**{**fields, "paragraphs": [tuple(span) for span in fields["paragraphs"]]})


def _objects(items: list) -> np.ndarray:
    """A one-dimensional numpy array of Python objects (numpy would otherwise look inside them)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array
