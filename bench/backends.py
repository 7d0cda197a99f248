"""PyTorch against ONNX Runtime (int8, dynamically quantised, exported locally): speed and SQuAD quality.

Speed: both backends encode the same BBC chunk texts (every --every-th chunk of the corpus, chunked as qa
chunks it) in the same process, interleaved in halves so a busy machine biases neither: the bare model
(mean-pooled vectors) and qa's `encode_chunks` (token embeddings + per-sentence late-chunking vectors), plus
single-question encoding latency. Quality: a SQuAD index is built and scored with each backend (each in its
own process, QA_BACKEND=torch|onnx, through bench/answer_latency.py --squad-only).

    .venv/bin/python bench/backends.py
    .venv/bin/python bench/backends.py --no-squad --every 10

Rule (issue 5): adopt ONNX as the default only if it is at least 2x faster and SQuAD hit@3 drops by at most
one point. Writes bench/results/backends.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BBC = ROOT.parent / "shared" / "corpora" / "bbc"
RESULTS = ROOT / "bench" / "results"


def chunk_texts(corpus: Path, every: int, count_tokens) -> tuple[list[str], list[list[tuple[int, int]]]]:
    from qa.articles import read_articles
    from qa.chunks import chunk_article

    chunks = [c for a in read_articles(corpus).articles for c in chunk_article(a, count_tokens)[1]][::every]
    return [c.text for c in chunks], [list(c.sentence_spans) for c in chunks]


def speed(texts: list[str], spans: list, questions: list[str]) -> dict:
    from qa.embeddings import Embedder

    embedders = {"torch": Embedder(backend="torch"), "onnx": Embedder(backend="onnx")}
    started = time.perf_counter()
    embedders["onnx"].encode_texts(["warm up"])  # exports the model on first use
    onnx_setup = time.perf_counter() - started
    embedders["torch"].encode_texts(["warm up"])
    seconds = {(name, kind): 0.0 for name in embedders for kind in ("raw", "chunks")}
    vectors = {name: [] for name in embedders}
    half = len(texts) // 2
    for part in (slice(0, half), slice(half, None)):
        for name, embedder in embedders.items():
            started = time.perf_counter()
            embedder.encode_texts(texts[part])
            seconds[(name, "raw")] += time.perf_counter() - started
            started = time.perf_counter()
            vectors[name].append(embedder.encode_chunks(texts[part], spans[part]))
            seconds[(name, "chunks")] += time.perf_counter() - started
    query_ms = {name: [] for name in embedders}
    for question in questions:
        for name, embedder in embedders.items():
            started = time.perf_counter()
            embedder.encode_texts([question])
            query_ms[name].append((time.perf_counter() - started) * 1000)
    chunk_cos = np.concatenate([(a.chunks * b.chunks).sum(1) for a, b in zip(vectors["torch"], vectors["onnx"])])
    sentence_cos = np.concatenate([(x * y).sum(1) for a, b in zip(vectors["torch"], vectors["onnx"])
                                   for x, y in zip(a.sentences, b.sentences)])
    return {
        "chunks": len(texts), "onnx_setup_s": onnx_setup,
        **{f"{name}_{kind}_rate": len(texts) / s for (name, kind), s in seconds.items()},
        **{f"{name}_query_p50_ms": float(np.percentile(v, 50)) for name, v in query_ms.items()},
        "chunk_cosine_mean": float(chunk_cos.mean()), "chunk_cosine_min": float(chunk_cos.min()),
        "sentence_cosine_mean": float(sentence_cos.mean()), "sentence_cosine_min": float(sentence_cos.min()),
    }


def squad(backend: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="qa-bench-backends-") as scratch:
        output = Path(scratch) / "squad.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "answer_latency.py"), "--squad-only", "--output", str(output)],
                       env=os.environ | {"QA_BACKEND": backend}, check=True, stdout=sys.stderr)
        return json.loads(output.read_text())[f"{backend}:squad"]["squad"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(BBC))
    parser.add_argument("--every", type=int, default=5, help="encode every N-th BBC chunk (default: %(default)s)")
    parser.add_argument("--no-squad", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "backends.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)
    from qa.embeddings import get_embedder

    texts, spans = chunk_texts(Path(args.corpus), args.every, get_embedder(backend="torch").count_tokens)
    questions = [f"What did the report say about {t.split(chr(10))[0][:60]}?" for t in texts[:: max(1, len(texts) // 50)]]
    result = {"speed": speed(texts, spans, questions)}
    if not args.no_squad:
        result["squad"] = {backend: squad(backend) for backend in ("torch", "onnx")}

    s = result["speed"]
    print(f"encoding {s['chunks']} BBC chunk texts (every {args.every}th chunk), same process, interleaved")
    print(f"{'measure':40s} {'torch':>10s} {'onnx int8':>10s} {'speed-up':>9s}")
    for kind, label in (("raw", "bare model, chunks/s"), ("chunks", "encode_chunks (late chunking), chunks/s")):
        print(f"{label:40s} {s[f'torch_{kind}_rate']:>10.1f} {s[f'onnx_{kind}_rate']:>10.1f} "
              f"{s[f'onnx_{kind}_rate'] / s[f'torch_{kind}_rate']:>8.2f}x")
    print(f"{'one question, p50 ms':40s} {s['torch_query_p50_ms']:>10.1f} {s['onnx_query_p50_ms']:>10.1f} "
          f"{s['torch_query_p50_ms'] / s['onnx_query_p50_ms']:>8.2f}x")
    print(f"cosine(torch, onnx): chunk vectors mean {s['chunk_cosine_mean']:.4f} (min {s['chunk_cosine_min']:.4f}); "
          f"sentence vectors mean {s['sentence_cosine_mean']:.4f} (min {s['sentence_cosine_min']:.4f}); "
          f"ONNX first use (export or load) {s['onnx_setup_s']:.1f} s")
    if "squad" in result:
        t, o = result["squad"]["torch"], result["squad"]["onnx"]
        print(f"\nSQuAD ({t['questions']} questions), each backend building and answering from its own index")
        print(f"{'measure':40s} {'torch':>10s} {'onnx int8':>10s}")
        print(f"{'hit@3':40s} {t['hit_at_3']:>10.1%} {o['hit_at_3']:>10.1%}")
        print(f"{'mean quoted chars':40s} {t['mean_quoted_chars']:>10.0f} {o['mean_quoted_chars']:>10.0f}")
        print(f"{'false abstentions':40s} {t['false_abstentions']:>10d} {o['false_abstentions']:>10d}")
        print(f"{'answer() p50 ms':40s} {t['answer_p50_ms']:>10.1f} {o['answer_p50_ms']:>10.1f}")
        faster = s["onnx_chunks_rate"] / s["torch_chunks_rate"]
        drop = (t["hit_at_3"] - o["hit_at_3"]) * 100
        adopt = faster >= 2 and drop <= 1
        print(f"\nrule: >= 2x faster ({faster:.2f}x) and hit@3 drop <= 1 point ({drop:+.1f}): "
              f"{'adopt ONNX as the default' if adopt else 'keep PyTorch as the default, ONNX as an option'}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
