"""The reranker: a small cross-encoder that reads the question, with what the conversation lends it, against each of
the best candidate sentences with its article's title, on ONNX Runtime (trained by bench/train_reranker.py)."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embeddings import inference_session, token_feeds

logger = logging.getLogger(__name__)

RERANKER_ENV = "QA_RERANKER"
DEFAULT_RERANKER = "minilm-l3-squad"
"""The shipped model: the first three layers of all-MiniLM-L6-v2, trained on SQuAD v1.1 train."""
NO_RERANKER = "none"
MODELS_DIR = Path(__file__).with_name("models")
GRAPH_FILE = "model_qint8.onnx"
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "settings.json"
"""Written last by the training script: the token budget, the rerank depth and the blend weight."""
CONTEXT_WORDS = 24
"""Words of the last answer that the question takes along as its context."""
_CITATION_MARK = re.compile(r"\s*\[\d+\]")
_SPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True)
class RerankerSettings:
    """How the reranker is used: pairs are cut to `max_tokens`; the `depth` best sentences by the linear ranker are
    read, and each gets `weight` times its relevance logit added to its ranker score; a further quote is added only
    while its score is within `quote_margin` of the best."""

    max_tokens: int
    depth: int
    weight: float
    quote_margin: float


def reranker_name(value: str | None = None) -> str:
    """The reranker to use: the argument, else $QA_RERANKER, else the shipped model; "none" keeps the linear ranker."""
    name = (value or os.environ.get(RERANKER_ENV) or DEFAULT_RERANKER).strip().lower()
    if name != NO_RERANKER and not (MODELS_DIR / name / SETTINGS_FILE).exists():
        known = sorted(p.name for p in MODELS_DIR.iterdir() if (p / SETTINGS_FILE).exists()) if MODELS_DIR.exists() else []
        raise ValueError(f"unknown reranker {name!r} (${RERANKER_ENV}): choose one of {', '.join([*known, NO_RERANKER])}")
    return name


def conversation_context(turns: Sequence[tuple[str, str]]) -> str:
    """What the conversation lends a question: the last turn's question and the first words of its answer
    (citation marks dropped); empty for a first question."""
    if not turns:
        return ""
    question, reply = turns[-1]
    words = _CITATION_MARK.sub("", reply).split()[:CONTEXT_WORDS]
    return _SPACE_RUN.sub(" ", f"{question} {' '.join(words)}").strip()


def question_text(question: str, context: str) -> str:
    """The first text of a pair: the question, then its conversation context in brackets."""
    return f"{question} ({context})" if context else question


def passage_text(title: str, sentence: str) -> str:
    """The second text of a pair: the sentence, after its article's title."""
    return f"{title}: {_SPACE_RUN.sub(' ', sentence).strip()}"


class Reranker:
    """A cross-encoder exported to ONNX (int8) with its tokenizer: relevance logits for (question, passage) pairs,
    without PyTorch."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        stored = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        self.name = folder.name
        self.settings = RerankerSettings(
            int(stored["max_tokens"]), int(stored["depth"]), float(stored["weight"]), float(stored["quote_margin"])
        )
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.settings.max_tokens, strategy="longest_first")
        self.session = inference_session(folder / GRAPH_FILE, spinning=False)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def score(self, question: str, passages: Sequence[str]) -> np.ndarray:
        """One relevance logit per passage (higher: more likely to answer the question)."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        feeds = token_feeds(self.tokenizer, [(question, passage) for passage in passages], self.inputs)
        return self.session.run(None, feeds)[0].reshape(-1)


_lock = threading.Lock()
_rerankers: dict[str, Reranker | None] = {}


def get_reranker(name: str | None = None) -> Reranker | None:
    """The process-wide reranker of that name (see reranker_name), or None for "none"."""
    name = reranker_name(name)
    with _lock:
        if name not in _rerankers:
            _rerankers[name] = None if name == NO_RERANKER else Reranker(MODELS_DIR / name)
            logger.info("reranker: %s", name)
        return _rerankers[name]
