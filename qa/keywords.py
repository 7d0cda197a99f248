"""Keywords: BM25 term counts that can be added and removed row by row, scored as bm25s scores them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import sparse

K1 = 1.5
B = 0.75
"""bm25s's defaults, with its Lucene scoring: idf = log(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + K1 (1 - B + B dl / avgdl)).
bm25s cannot add or remove documents from a built index (xhluca/bm25s#5, #98), so qa keeps raw term counts,
which can be, and derives the scores from them when an index is loaded."""


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: list[str]) -> list[list[str]]:
    """BM25 terms of each text: lower-cased words without English stop words, stemmed (bm25s's tokenizer)."""
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


@lru_cache(maxsize=10_000)
def query_terms(text: str) -> tuple[str, ...]:
    """The BM25 terms of one question or answer, remembered: conversations ask about the same turns again."""
    return tuple(tokenize([text])[0])


@dataclass
class TermCounts:
    """How often each term occurs in each of a set of texts: a (texts x terms) sparse matrix and its terms."""

    counts: sparse.csr_matrix
    terms: np.ndarray
    """The column labels of `counts` (str), sorted."""

    @classmethod
    def of(cls, texts: list[str]) -> TermCounts:
        return cls.from_tokens(tokenize(texts))

    @classmethod
    def from_tokens(cls, tokens: list[Sequence[str]]) -> TermCounts:
        """Counts of texts already split into BM25 terms (see `tokenize`)."""
        terms, columns = np.unique(np.array([t for text in tokens for t in text], dtype=str), return_inverse=True)
        rows = np.repeat(np.arange(len(tokens)), [len(text) for text in tokens])
        counts = sparse.csr_matrix(
            (np.ones(len(columns), dtype=np.float32), (rows, columns)), shape=(len(tokens), len(terms))
        )
        counts.sum_duplicates()
        return cls(counts, terms)

    @classmethod
    def stack(cls, parts: list[TermCounts]) -> TermCounts:
        """One matrix with the rows of all parts, in order, over the union of their terms."""
        if parts and all(part.terms is parts[0].terms for part in parts):  # rows of one index: same columns
            return cls(sparse.vstack([part.counts for part in parts], format="csr"), parts[0].terms)
        terms, inverse = np.unique(np.concatenate([part.terms for part in parts] or [np.array([], dtype=str)]),
                                   return_inverse=True)
        blocks, offset = [], 0
        for part in parts:
            remap = inverse[offset : offset + len(part.terms)]
            offset += len(part.terms)
            coo = part.counts.tocoo()
            blocks.append(sparse.csr_matrix((coo.data, (coo.row, remap[coo.col])), shape=(coo.shape[0], len(terms))))
        counts = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, 0), dtype=np.float32)
        return cls(counts, terms)

    def rows(self, selected: np.ndarray) -> TermCounts:
        """The counts of the rows `selected` (indices, in the order given), over the same terms."""
        selected = np.asarray(selected, dtype=np.int64)
        indptr = self.counts.indptr
        starts, lengths = indptr[selected], indptr[selected + 1] - indptr[selected]
        new_indptr = np.concatenate([[0], np.cumsum(lengths)])
        taken = concatenated_ranges(starts, lengths)
        counts = sparse.csr_matrix(
            (self.counts.data[taken], self.counts.indices[taken], new_indptr), shape=(len(selected), self.counts.shape[1])
        )
        return TermCounts(counts, self.terms)


def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`start, start + 1, ..., start + length - 1` for each (start, length), one range after another, as one array."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, dtype=np.int64)
    return np.repeat(starts - offsets, lengths) + np.arange(lengths.sum(), dtype=np.int64)


def idf(frequencies: np.ndarray, n_rows: int) -> np.ndarray:
    """BM25's inverse document frequency of terms that `frequencies` of `n_rows` rows hold."""
    return np.log(1 + (n_rows - frequencies + 0.5) / (frequencies + 0.5))


def saturated(tf: np.ndarray, lengths: np.ndarray, average_length: float) -> np.ndarray:
    """BM25's term-frequency part: a term's count `tf` in rows of `lengths` terms, saturating with K1, normalised by B."""
    return tf / (tf + K1 * ((1 - B) + B * lengths / average_length))


class KeywordIndex:
    """BM25 scores of every row of a TermCounts for a list of query terms."""

    def __init__(self, term_counts: TermCounts):
        counts = term_counts.counts.tocsc()
        n_rows = counts.shape[0]
        lengths = np.asarray(counts.sum(axis=1)).ravel()
        average = float(lengths.mean()) if n_rows and lengths.mean() > 0 else 1.0
        frequency = np.diff(counts.indptr)
        weights = np.repeat(idf(frequency, n_rows), frequency) * saturated(counts.data, lengths[counts.indices], average)
        counts.data = weights.astype(np.float32)
        self.weights = counts
        self.n_rows = n_rows
        self.average_length = average
        self.document_frequency = frequency
        self.columns = {str(term): column for column, term in enumerate(term_counts.terms)}

    def frequencies(self, terms: Sequence[str]) -> np.ndarray:
        """The number of rows holding each of `terms` (0 for a term no row holds)."""
        return np.array(
            [self.document_frequency[self.columns[t]] if t in self.columns else 0 for t in terms], dtype=np.int64
        )

    def scores(self, terms: list[str], rows: np.ndarray | None = None) -> np.ndarray:
        """Summed BM25 scores of the known `terms` (repeats count again), for all rows or for `rows` only."""
        total = np.zeros(self.n_rows, dtype=np.float32)
        for term in terms:
            column = self.columns.get(term)
            if column is not None:
                start, end = self.weights.indptr[column], self.weights.indptr[column + 1]
                total[self.weights.indices[start:end]] += self.weights.data[start:end]
        return total if rows is None else total[rows]


def bm25_terms(counts: TermCounts, terms: Sequence[str], frequencies: np.ndarray, n_rows: int, average_length: float) -> np.ndarray:
    """(rows x terms) BM25 contributions of each of `terms` to each row of `counts`, with the document frequencies
    `frequencies` (one per term) and row statistics of the whole index, as KeywordIndex scores them."""
    matrix = counts.counts
    scores = np.zeros((matrix.shape[0], len(terms)), dtype=np.float32)
    if not len(counts.terms) or not len(terms):
        return scores
    columns = np.minimum(np.searchsorted(counts.terms, np.array(terms, dtype=str)), len(counts.terms) - 1)
    frequencies = np.asarray(frequencies, dtype=np.float64)
    known = (counts.terms[columns] == np.array(terms, dtype=str)) & (frequencies > 0)
    term_of_column = np.full(len(counts.terms), -1, dtype=np.int64)
    term_of_column[columns[known]] = np.flatnonzero(known)
    row_of_entry = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    lengths = np.bincount(row_of_entry, matrix.data, matrix.shape[0])
    term = term_of_column[matrix.indices]
    hit = term >= 0
    rows, term, tf = row_of_entry[hit], term[hit], matrix.data[hit]
    scores[rows, term] = idf(frequencies, n_rows)[term] * saturated(tf, lengths[rows], max(average_length, 1e-9))
    repeated = known & (term_of_column[columns] != np.arange(len(terms)))
    scores[:, repeated] = scores[:, term_of_column[columns[repeated]]]
    return scores
