"""Segments: write-once files of embedded rows (ids, vectors, term counts) that index generations share."""

from __future__ import annotations

import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from ..keywords import TermCounts
from . import KINDS

logger = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".npz"


class SegmentError(ValueError):
    """A segment file is missing, damaged, or lacks rows the index needs."""


@dataclass
class Rows:
    """Embedded rows of one kind (chunks or sentences), in the order of their ids."""

    ids: np.ndarray
    """Database ids (int64), unique for the life of the index: never reused after a row is deleted."""
    vectors: np.ndarray
    """Unit-length embeddings, float32, one row per id."""
    terms: TermCounts
    """BM25 term counts, one row per id."""
    standalone: np.ndarray | None = None
    """For sentences: each embedded on its own, float16 unit vectors, one row per id."""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Segment:
    """The chunks and sentences embedded by one build (or merged from earlier segments)."""

    chunks: Rows
    sentences: Rows


def write_segment(folder: Path, segment: Segment) -> str:
    """Save `segment` under a new name in `folder` (written to a temporary name, synced, then renamed); returns the name."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"seg-{time.time_ns()}{SEGMENT_SUFFIX}"
    arrays = {}
    for kind in KINDS:
        rows: Rows = getattr(segment, kind)
        counts = rows.terms.counts.tocsr()
        arrays |= {
            f"{kind}_ids": rows.ids.astype(np.int64),
            f"{kind}_vectors": rows.vectors.astype(np.float32),
            f"{kind}_term_indptr": counts.indptr.astype(np.int64),
            f"{kind}_term_columns": counts.indices.astype(np.int32),
            f"{kind}_term_counts": counts.data.astype(np.float32),
            f"{kind}_terms": rows.terms.terms.astype(str),
        }
        if rows.standalone is not None:
            arrays[f"{kind}_standalone"] = rows.standalone.astype(np.float16)
    temporary = folder / f"{name}.tmp"
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / name)
    return name


def read_segment(folder: Path, name: str) -> Segment:
    """Load a segment written by `write_segment`; raises SegmentError when it is missing or damaged."""
    try:
        with np.load(folder / name, allow_pickle=False) as stored:
            kinds = {}
            for kind in KINDS:
                terms = stored[f"{kind}_terms"]
                counts = sparse.csr_matrix(
                    (stored[f"{kind}_term_counts"], stored[f"{kind}_term_columns"], stored[f"{kind}_term_indptr"]),
                    shape=(len(stored[f"{kind}_term_indptr"]) - 1, len(terms)),
                )
                standalone = stored[f"{kind}_standalone"] if f"{kind}_standalone" in stored.files else None
                kinds[kind] = Rows(stored[f"{kind}_ids"], stored[f"{kind}_vectors"], TermCounts(counts, terms), standalone)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise SegmentError(f"segment {folder / name} cannot be read ({error})") from None
    return Segment(**kinds)


def gather(folder: Path, names: list[str], chunk_ids: np.ndarray, sentence_ids: np.ndarray) -> Segment:
    """The rows with the given ids (sorted ascending), in that order, collected from the named segments."""
    segments = [read_segment(folder, name) for name in names]
    wanted = {"chunks": chunk_ids, "sentences": sentence_ids}
    return Segment(**{kind: _gather_rows([getattr(s, kind) for s in segments], wanted[kind], kind) for kind in KINDS})


def _gather_rows(parts: list[Rows], ids: np.ndarray, kind: str) -> Rows:
    dimension = next((part.vectors.shape[1] for part in parts if part.vectors.ndim == 2), 0)
    vectors = np.zeros((len(ids), dimension), dtype=np.float32)
    with_standalone = any(part.standalone is not None for part in parts)
    standalone = np.zeros((len(ids), dimension), dtype=np.float16) if with_standalone else None
    found = np.zeros(len(ids), dtype=bool)
    positions, term_parts = [], []
    for part in parts:
        position = np.searchsorted(ids, part.ids)
        live = position < len(ids)
        live[live] = ids[position[live]] == part.ids[live]
        vectors[position[live]] = part.vectors[live]
        if standalone is not None:
            if part.standalone is None:
                raise SegmentError(f"a segment of the index lacks the standalone {kind} vectors: rebuild it")
            standalone[position[live]] = part.standalone[live]
        found[position[live]] = True
        positions.append(position[live])
        term_parts.append(part.terms.rows(np.flatnonzero(live)))
    if not found.all():
        raise SegmentError(f"{int((~found).sum())} {kind} of the index are in none of its segments")
    terms = TermCounts.stack(term_parts).rows(np.argsort(np.concatenate(positions or [np.zeros(0, np.int64)])))
    return Rows(ids, vectors, terms, standalone)


def remove_unreferenced(folder: Path, keep: set[str]) -> None:
    """Delete segment files (and leftovers of killed writes) that no kept generation refers to."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name not in keep:
            logger.debug("removing unreferenced segment %s", path.name)
            path.unlink(missing_ok=True)
