"""The reranker: a small cross-encoder that reads the question, with what the conversation lends it, against each of
the best candidate sentences with its article's title, on ONNX Runtime (trained by bench/train_reranker.py)."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import numpy as np

from .embeddings import inference_session, padded_feeds

logger = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")
_lock = threading.Lock()
_loaded: dict[tuple[str, str], object] = {}

RERANKER_ENV = "QA_RERANKER"
DEFAULT_RERANKER = "minilm-l3-squad"
"""The shipped model: the first three layers of all-MiniLM-L6-v2, trained on SQuAD v1.1 train."""
NO_MODEL = "none"
NO_RERANKER = NO_MODEL
RERANKER = "reranker"
MODELS_DIR = Path(__file__).with_name("models")
GRAPH_FILE = "model_qint8.onnx"
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "settings.json"
"""Written last by the training script: the model's kind, its token budget and how it is used."""
KIND_KEY = "kind"
MAX_SPAN_TOKENS = 24
"""The longest short answer the reader gives, in word pieces."""
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
    short_answer_confidence: float | None = None
    """A short answer is given only at this confidence or above (None: the model gives none)."""


@dataclass(frozen=True)
class AnswerSpan:
    """Where the short answer stands in a sentence (`sentence[start:end]`, whole words), and the reader's probability
    for it were that sentence the one that answers."""

    start: int
    end: int
    probability: float


@dataclass(frozen=True)
class Reading:
    """What the reader makes of each passage: its relevance logit, and the short answer in its sentence (None when
    the model has no span head)."""

    relevance: np.ndarray
    spans: list[AnswerSpan | None]


def shipped_models(kind: str) -> list[str]:
    """The names of the trained models of `kind` ("reranker", "reader") in qa/models/."""
    return [name for name, its_kind in _shipped().items() if its_kind == kind]


def model_name(kind: str, value: str | None, env: str, default: str) -> str:
    """The model of `kind` to use: `value`, else $`env`, else `default`; NO_MODEL for none."""
    name = (value or os.environ.get(env) or default).strip().lower()
    if name != NO_MODEL and name not in shipped_models(kind):
        choices = ", ".join([*shipped_models(kind), NO_MODEL])
        raise ValueError(f"unknown {kind} {name!r} (${env}): choose one of {choices}")
    return name


def loaded_model(kind: str, name: str, load: Callable[[Path], T]) -> T | None:
    """The process-wide model of that kind and name (see model_name), loaded once; None for NO_MODEL."""
    with _lock:
        if (kind, name) not in _loaded:
            _loaded[kind, name] = None if name == NO_MODEL else load(MODELS_DIR / name)
            logger.info("%s: %s", kind, name)
        return _loaded[kind, name]


@functools.lru_cache(maxsize=1)
def _shipped() -> dict[str, str]:
    """Each trained model's name and kind, as its settings say."""
    found = {}
    for path in sorted(MODELS_DIR.glob(f"*/{SETTINGS_FILE}")):
        found[path.parent.name] = json.loads(path.read_text(encoding="utf-8")).get(KIND_KEY)
    return found


def reranker_name(value: str | None = None) -> str:
    """The reranker to use: the argument, else $QA_RERANKER, else the shipped model; "none" keeps the linear ranker."""
    return model_name(RERANKER, value, RERANKER_ENV, DEFAULT_RERANKER)


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
    return f"{passage_prefix(title)}{_SPACE_RUN.sub(' ', sentence).strip()}"


def passage_prefix(title: str) -> str:
    """What stands before the sentence in a passage (its article's title)."""
    return f"{title}: "


def sentence_tokens(encoding, prefix_chars: int) -> np.ndarray:
    """Which tokens of a (question, passage) encoding belong to the passage's sentence, after its `prefix_chars`
    characters of title: where a short answer may start and end."""
    return np.array([sequence == 1 and begin >= prefix_chars and end > begin
                     for sequence, (begin, end) in zip(encoding.sequence_ids, encoding.offsets)], dtype=bool)


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray,
              null_token: int | None = None) -> tuple[int, int, float]:
    """The most probable (first token, last token) of a span over the `allowed` tokens, at most MAX_SPAN_TOKENS long,
    and its probability (start and end each a softmax over the allowed tokens, and over `null_token` too when the
    model can say that the passage holds no answer); (-1, -1, 0.0) when none is allowed."""
    if not allowed.any():
        return -1, -1, 0.0
    over = allowed.copy()
    if null_token is not None:
        over[null_token] = True
    start_p, end_p = _softmax_over(start_logits, over), _softmax_over(end_logits, over)
    start_p, end_p = np.where(allowed, start_p, 0.0), np.where(allowed, end_p, 0.0)
    joint = np.triu(np.tril(np.outer(start_p, end_p), MAX_SPAN_TOKENS - 1))
    first, last = np.unravel_index(int(np.argmax(joint)), joint.shape)
    return int(first), int(last), float(joint[first, last])


def _softmax_over(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    shifted = np.where(allowed, logits - logits[allowed].max(), -np.inf)
    weights = np.exp(shifted)
    return weights / weights.sum()


def span_in(encoding, passage: str, prefix: int, start_logits, end_logits, null_token: int | None) -> AnswerSpan | None:
    """The short answer a span head's logits point at in the sentence of `passage` (after its `prefix` characters of
    title), widened to whole words; None when there is no room for one."""
    width = len(encoding.ids)
    first, last, probability = best_span(start_logits[:width], end_logits[:width], sentence_tokens(encoding, prefix),
                                         null_token)
    if first < 0:
        return None
    sentence = passage[prefix:]
    start, end = word_span(sentence, encoding.offsets[first][0] - prefix, encoding.offsets[last][1] - prefix)
    return AnswerSpan(start, end, probability) if start < end else None


def word_span(sentence: str, start: int, end: int) -> tuple[int, int]:
    """(start, end) widened to whole words of `sentence`, and trimmed of surrounding punctuation and space."""
    while start > 0 and sentence[start - 1].isalnum():
        start -= 1
    while end < len(sentence) and sentence[end].isalnum():
        end += 1
    while start < end and not sentence[start].isalnum() and sentence[start] not in "$£€#":
        start += 1
    while end > start and not sentence[end - 1].isalnum() and sentence[end - 1] not in "%)":
        end -= 1
    return start, end


def model_settings(folder: Path, settings_type: type[S]) -> S:
    """A model folder's settings.json as its settings dataclass (keys the dataclass does not name are ignored)."""
    stored = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    return settings_type(**{field.name: stored[field.name] for field in fields(settings_type) if field.name in stored})


@dataclass(frozen=True)
class PairReading:
    """A batch of (question, title and sentence) pairs as a pair model read them: the passages, the characters of
    title before each one's sentence, their encodings and the graph's outputs."""

    passages: list[str]
    prefixes: list[int]
    encodings: list
    outputs: list[np.ndarray]

    def spans(self, start_logits: np.ndarray, end_logits: np.ndarray, null_token: int | None) -> list[AnswerSpan | None]:
        """span_in for each pair, from a span head's start and end logits."""
        return [span_in(encoding, passage, prefix, start_logits[row], end_logits[row], null_token)
                for row, (encoding, passage, prefix) in enumerate(zip(self.encodings, self.passages, self.prefixes))]


class PairModel:
    """A model folder's tokenizer (pairs cut to `max_tokens`, the longer text first, no padding) and its ONNX Runtime
    session, reading a question against (title, sentence) passages."""

    def __init__(self, folder: Path, max_tokens: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens, strategy="longest_first")
        self.session = inference_session(folder / GRAPH_FILE)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def read(self, question: str, sentences: Sequence[tuple[str, str]]) -> PairReading:
        """Run the graph on the question against each (title, sentence)."""
        passages = [passage_text(title, text) for title, text in sentences]
        encodings = self.tokenizer.encode_batch([(question, passage) for passage in passages])
        prefixes = [len(passage_prefix(title)) for title, _ in sentences]
        return PairReading(passages, prefixes, encodings, self.session.run(None, padded_feeds(encodings, self.inputs)))


class Reranker:
    """A cross-encoder exported to ONNX (int8) with its tokenizer: relevance logits for (question, passage) pairs,
    without PyTorch."""

    def __init__(self, folder: Path):
        self.name = folder.name
        self.settings = model_settings(folder, RerankerSettings)
        self.model = PairModel(folder, self.settings.max_tokens)

    def read(self, question: str, sentences: Sequence[tuple[str, str]]) -> Reading:
        """Read each (title, sentence) against the question: the relevance logits (higher: more likely to answer)
        and, with a span head, the short answer within each sentence (offsets into the sentence with its runs of
        white space folded, as the index keeps it)."""
        if not sentences:
            return Reading(np.zeros(0, dtype=np.float32), [])
        read = self.model.read(question, sentences)
        relevance = read.outputs[0].reshape(-1)
        if len(read.outputs) < 3:
            return Reading(relevance, [None] * len(sentences))
        return Reading(relevance, read.spans(*read.outputs[1:], None))


def get_reranker(name: str | None = None) -> Reranker | None:
    """The process-wide reranker of that name (see reranker_name), or None for "none"."""
    return loaded_model(RERANKER, reranker_name(name), Reranker)
