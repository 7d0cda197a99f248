"""The short-answer reader: a six-layer cross-encoder that points at the words of a quoted sentence that answer the
question, or says that the sentence holds none, on ONNX Runtime (trained by bench/train_reader.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .reranker import NO_MODEL, AnswerSpan, PairModel, loaded_model, model_name, model_settings

logger = logging.getLogger(__name__)

READER_ENV = "QA_READER"
DEFAULT_READER = "minilm-l6-reader"
"""The shipped model: all six layers of all-MiniLM-L6-v2, trained on SQuAD v1.1 train to point at short answers."""
NO_READER = NO_MODEL
READER = "reader"
NULL_TOKEN = 0
"""The token ([CLS]) the reader points at when a sentence holds no answer."""


@dataclass(frozen=True)
class ReaderSettings:
    """How the reader is used: pairs are cut to `max_tokens`; a short answer is given only at
    `short_answer_confidence` or above (None: not calibrated yet, so none is given)."""

    max_tokens: int
    short_answer_confidence: float | None = None


def reader_name(value: str | None = None) -> str:
    """The reader to use: the argument, else $QA_READER, else the shipped model; "none" gives no short answers."""
    return model_name(READER, value, READER_ENV, DEFAULT_READER)


class Reader:
    """A span reader exported to ONNX (int8) with its tokenizer: where the short answer stands in each sentence,
    without PyTorch."""

    def __init__(self, folder: Path):
        self.name = folder.name
        self.settings = model_settings(folder, ReaderSettings)
        self.model = PairModel(folder, self.settings.max_tokens)

    def read(self, question: str, sentences: Sequence[tuple[str, str]]) -> list[AnswerSpan | None]:
        """For each (title, sentence), the short answer in the sentence (offsets into it with its runs of white space
        folded, as the index keeps it) and its probability, which is low when the reader finds no answer there."""
        if not sentences:
            return []
        read = self.model.read(question, sentences)
        return read.spans(*read.outputs, NULL_TOKEN)


def get_reader(name: str | None = None) -> Reader | None:
    """The process-wide reader of that name (see reader_name), or None for "none"."""
    return loaded_model(READER, reader_name(name), Reader)
