"""FAISS search latency and recall@10 at 10k, 100k and 1M synthetic 384-d unit vectors: exact against approximate.

qa searches one question vector at a time, so latency is per single-vector search (p50/p95 over the queries).
Vectors are synthetic: by default Gaussian with a decaying spectrum (dimension i has variance ~ 1/(i+1), as
sentence embeddings concentrate their variance in a few directions), normalised; `--distribution uniform`
(uniform on the sphere) is the hardest case for approximate search. Queries are fresh draws.
faiss runs single-threaded by default (`--threads 1`): one query vector at a time gains nothing from
OpenMP, and on a busy 2-core machine OpenMP's spinning threads made a 10k exact search 40 ms instead of 1.

Indexes (all inner product on unit vectors = cosine):
- exact: IndexFlatIP, wrapped in IndexIDMap2 for stable ids (the truth recall is measured against);
- float16: IndexScalarQuantizer QT_fp16, searched for k + 14, the finds rescored on the float32 vectors (what qa
  uses below 200,000 chunks: half the memory read of IndexFlatIP);
- IVF: IndexIVFFlat (what qa uses from 200,000 chunks, nprobe 128), nlist ≈ 4·sqrt(n) (k-means, 10 iterations, on a sample of at most 40·nlist vectors), ids stored natively
  (add_with_ids / remove_ids), swept over nprobe;
- HNSW: IndexHNSWFlat (M=32, efConstruction=80), swept over efSearch; built only up to --hnsw-max vectors
  (default 100,000: at 1M its build takes many minutes on 2 cores; the table says when it was skipped).
  HNSW cannot remove vectors (faiss raises), which the removal check shows.

    .venv/bin/python bench/search.py                       # 10k, 100k, 1M
    .venv/bin/python bench/search.py --sizes 10000,100000 --hnsw-max 1000000

Writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import faiss
import numpy as np

from qa.store.embedded import RESCORED_EXTRA, rescored_search

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DIM = 384
K = 10
TARGET_RECALL = 0.95
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128)
EF_SEARCHES = (16, 32, 64, 128, 256)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors(n: int, rng: np.random.Generator, distribution: str, block: int = 100_000) -> np.ndarray:
    """Unit vectors: "anisotropic" (variance of dimension i proportional to 1/(i+1), as the decaying spectrum of
    sentence embeddings) or "uniform" (isotropic Gaussian, uniform on the sphere: the hardest case)."""
    scale = (1.0 / np.sqrt(np.arange(1, DIM + 1))).astype(np.float32) if distribution == "anisotropic" else 1.0
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        out[start : start + m] = unit(rng.standard_normal((m, DIM), dtype=np.float32) * scale)
    return out


SEARCH_THREADS = 1
BUILD_THREADS = faiss.omp_get_max_threads()


def timed_search(index, queries: np.ndarray, k: int = K) -> tuple[np.ndarray, list[float]]:
    faiss.omp_set_num_threads(SEARCH_THREADS)
    ids, times = np.empty((len(queries), k), np.int64), []
    for i, query in enumerate(queries):
        started = time.perf_counter()
        _, found = index.search(query[None, :], k)
        times.append((time.perf_counter() - started) * 1000)
        ids[i] = found[0]
    faiss.omp_set_num_threads(BUILD_THREADS)  # building and training use every core
    return ids, times


class RescoredFloat16:
    """qa's search below 200,000 chunks, with FAISS's `search(queries, k)`: the float16 index's best k +
    RESCORED_EXTRA rows, the k best of them by their float32 vectors, as ids."""

    def __init__(self, data: np.ndarray, ids: np.ndarray):
        self.data, self.ids = data, ids
        self.index = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        self.index.add(data)

    def search(self, queries: np.ndarray, k: int) -> tuple[None, np.ndarray]:
        return None, np.stack([self.ids[rescored_search(self.index, self.data, query, k)] for query in queries])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def row(size: int, kind: str, params: str, build_s: float, times: list[float], rec: float, memory_mb: float) -> dict:
    return {"size": size, "index": kind, "params": params, "build_s": build_s, "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95)), "recall": rec, "memory_mb": memory_mb}


def index_mb(index) -> float:
    return len(faiss.serialize_index(index)) / 1e6


def bench_size(n: int, rng: np.random.Generator, distribution: str, queries: np.ndarray, hnsw_max: int) -> tuple[list[dict], dict]:
    data = vectors(n, rng, distribution)
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # stable ids that are not row numbers, like chunk ids after removals
    rows = []

    started = time.perf_counter()
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    exact.add_with_ids(data, ids)
    truth, times = timed_search(exact, queries)
    rows.append(row(n, "exact IndexFlatIP", "-", time.perf_counter() - started - sum(times) / 1000, times, 1.0, n * DIM * 4 / 1e6))

    started = time.perf_counter()
    half = RescoredFloat16(data, ids)
    half_build = time.perf_counter() - started
    found, times = timed_search(half, queries)
    rows.append(row(n, "float16 SQ", f"+{RESCORED_EXTRA} rescored", half_build, times, recall(found, truth), n * DIM * 2 / 1e6))

    nlist = 1 << round(math.log2(4 * math.sqrt(n)))
    started = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    sample = data[rng.choice(n, min(n, 40 * nlist), replace=False)]
    ivf.train(sample)
    ivf.add_with_ids(data, ids)
    ivf_build = time.perf_counter() - started
    ivf_memory = n * (DIM * 4 + 8) / 1e6 + nlist * DIM * 4 / 1e6
    chosen = None
    for nprobe in NPROBES:
        if nprobe > nlist:
            break
        ivf.nprobe = nprobe
        found, times = timed_search(ivf, queries)
        rows.append(row(n, f"IVF{nlist},Flat", f"nprobe={nprobe}", ivf_build, times, recall(found, truth), ivf_memory))
        if chosen is None and rows[-1]["recall"] >= TARGET_RECALL:
            chosen = rows[-1]
    ivf.nprobe = int(chosen["params"].split("=")[1]) if chosen else NPROBES[-1]

    if n <= hnsw_max:
        started = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        wrapped = faiss.IndexIDMap2(hnsw)
        wrapped.add_with_ids(data, ids)
        hnsw_build = time.perf_counter() - started
        for ef in EF_SEARCHES:
            hnsw.hnsw.efSearch = ef
            found, times = timed_search(wrapped, queries)
            rows.append(row(n, "HNSW32,Flat", f"efSearch={ef}", hnsw_build, times, recall(found, truth), index_mb(hnsw)))
    else:
        rows.append({"size": n, "index": "HNSW32,Flat", "params": f"skipped (n > --hnsw-max {hnsw_max})"})

    removal = check_removal(n, exact, ivf, ids, queries, rng)
    return rows, removal | {"size": n, "nlist": nlist, "nprobe": ivf.nprobe}


def check_removal(n: int, exact, ivf, ids: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> dict:
    """Remove 1% of the ids from the IVF index (and from exact search); removed ids never come back, recall holds.

    The IVF index gets a hash-table direct map first, so that `reconstruct(id)` can show a removed id is gone
    (qa itself keeps the chunk vectors in memory and needs none); with it, faiss removes only through
    IDSelectorArray. The index
    is also written and read back (nprobe and the direct map survive) before the removal, and re-adding the
    removed vectors under new ids is checked."""
    gone = np.sort(rng.choice(ids, max(1, n // 100), replace=False))
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    ivf = faiss.deserialize_index(faiss.serialize_index(ivf))
    started = time.perf_counter()
    removed_ivf = ivf.remove_ids(faiss.IDSelectorArray(len(gone), faiss.swig_ptr(gone)))
    remove_ms = (time.perf_counter() - started) * 1000
    removed_exact = exact.remove_ids(faiss.IDSelectorBatch(gone))
    truth, _ = timed_search(exact, queries)
    found, _ = timed_search(ivf, queries)
    leaked = int(np.isin(found, gone).sum())
    try:
        ivf.reconstruct(int(gone[0]))
        leaked += 1
    except RuntimeError:
        pass
    fresh = unit(rng.standard_normal((len(gone), DIM), dtype=np.float32))
    new_ids = np.arange(len(gone), dtype=np.int64) + int(ids.max()) + 1
    ivf.add_with_ids(fresh, new_ids)
    readded = bool(np.allclose(ivf.reconstruct_batch(new_ids[:5]), fresh[:5]))
    try:
        probe = faiss.IndexIDMap2(faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT))
        probe.add_with_ids(unit(rng.standard_normal((100, DIM), dtype=np.float32)), np.arange(100, dtype=np.int64))
        probe.remove_ids(faiss.IDSelectorBatch(np.array([1], np.int64)))
        hnsw_removal = "works"
    except RuntimeError as error:
        hnsw_removal = "not supported: " + str(error).strip().splitlines()[-1][:90]
    return {"readded": readded, "removed": int(removed_ivf), "removed_exact": int(removed_exact), "remove_ms": remove_ms, "leaked": leaked,
            "recall_after": recall(found, truth), "ntotal_after": int(ivf.ntotal), "hnsw_removal": hnsw_removal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest size to build HNSW at (default: %(default)s)")
    parser.add_argument("--distribution", choices=("anisotropic", "uniform"), default="anisotropic")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads for faiss (default: %(default)s; see the docstring)")
    parser.add_argument("--output", default=str(RESULTS / "search.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    global SEARCH_THREADS
    SEARCH_THREADS = args.threads
    queries = vectors(args.queries, rng, args.distribution)
    print(f"faiss {faiss.__version__}, searching on {SEARCH_THREADS} thread(s), building on {BUILD_THREADS}, {args.distribution} 384-d unit vectors, "
          f"{args.queries} single-vector queries, k={K}")
    print(f"{'vectors':>9s} {'index':18s} {'params':14s} {'build s':>8s} {'p50 ms':>7s} {'p95 ms':>7s} {'recall@10':>9s} {'MB':>7s}")
    all_rows, removals = [], []
    for n in [int(s) for s in args.sizes.split(",")]:
        rows, removal = bench_size(n, rng, args.distribution, queries, args.hnsw_max)
        for r in rows:
            if "p50_ms" in r:
                print(f"{r['size']:>9,d} {r['index']:18s} {r['params']:14s} {r['build_s']:>8.1f} {r['p50_ms']:>7.2f} "
                      f"{r['p95_ms']:>7.2f} {r['recall']:>9.3f} {r['memory_mb']:>7.0f}", flush=True)
            else:
                print(f"{r['size']:>9,d} {r['index']:18s} {r['params']}", flush=True)
        all_rows += rows
        removals.append(removal)
    print("\nremoval by id (1% of the ids, IDSelectorArray) from the IVF index at its chosen nprobe, with a hash-table")
    print("direct map (for reconstruct_batch), after a write/read round trip; then as many vectors re-added under new ids:")
    print(f"{'vectors':>9s} {'nlist':>6s} {'nprobe':>6s} {'removed':>8s} {'ms':>7s} {'removed ids returned':>21s} "
          f"{'recall@10 after':>16s} {'re-added':>9s}")
    for r in removals:
        print(f"{r['size']:>9,d} {r['nlist']:>6d} {r['nprobe']:>6d} {r['removed']:>8d} {r['remove_ms']:>7.1f} "
              f"{r['leaked']:>21d} {r['recall_after']:>16.3f} {'ok' if r['readded'] else 'FAILED':>9s}")
    print(f"IndexIDMap2(IndexHNSWFlat).remove_ids: {removals[-1]['hnsw_removal']}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"rows": all_rows, "removal": removals, "distribution": args.distribution}, indent=2))


if __name__ == "__main__":
    main()
