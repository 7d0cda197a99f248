"""Chunks: splitting an article's story into sentences with offsets, and grouping them into overlapping chunks."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .articles import Article

MAX_SENTENCE_CHARS = 1200
"""Longer runs without sentence punctuation are cut at spaces into pieces of about this size."""
CHUNK_TOKENS = 160
"""Word pieces a chunk aims for: within all-MiniLM-L6-v2's 256, short enough to stay on one topic."""
OVERLAP_SENTENCES = 2
CHUNK_JOINER = " "

_SPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True)
class Sentence:
    """A sentence of an article: `article.text[start:end]`."""

    start: int
    end: int


@dataclass(frozen=True)
class Chunk:
    """Consecutive sentences of one article, embedded together.

    `text` is the article's title on a line of its own, then the sentences joined with single spaces;
    `sentence_spans[k]` is where sentence `first + k` lies inside `text`.
    """

    first: int
    last: int
    text: str
    sentence_spans: tuple[tuple[int, int], ...]


@lru_cache(maxsize=1)
def _segmenter():
    import pysbd  # imported on first use: a build with nothing to embed never needs it

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(article: Article) -> list[Sentence]:
    """Sentences of the article's story paragraphs, as offsets into `article.text`."""
    sentences = []
    for paragraph_start, paragraph_end in article.paragraphs:
        paragraph = article.text[paragraph_start:paragraph_end]
        cursor = 0
        for segment in _segmenter().processor(paragraph).process():  # segment() without its unused span pass
            found = paragraph.find(segment, cursor)
            if found < 0:  # pysbd changed the text: fall back to what is left of the paragraph
                found = cursor
                segment = paragraph[cursor:]
            start, end = found, found + len(segment)
            cursor = end
            while start < end and paragraph[start].isspace():
                start += 1
            while end > start and paragraph[end - 1].isspace():
                end -= 1
            if start < end:
                sentences.extend(_cut_long(paragraph, start, end, paragraph_start))
        if cursor < len(paragraph) and paragraph[cursor:].strip():
            start = cursor + len(paragraph[cursor:]) - len(paragraph[cursor:].lstrip())
            sentences.extend(_cut_long(paragraph, start, len(paragraph.rstrip()), paragraph_start))
    return sentences


def _cut_long(paragraph: str, start: int, end: int, offset: int) -> list[Sentence]:
    """Cut a run longer than MAX_SENTENCE_CHARS at spaces; shorter runs come back whole."""
    pieces = []
    while end - start > MAX_SENTENCE_CHARS:
        cut = paragraph.rfind(" ", start + MAX_SENTENCE_CHARS // 2, start + MAX_SENTENCE_CHARS)
        if cut < 0:
            cut = start + MAX_SENTENCE_CHARS
        pieces.append(Sentence(offset + start, offset + cut))
        start = cut
        while start < end and paragraph[start].isspace():
            start += 1
    if start < end:
        pieces.append(Sentence(offset + start, offset + end))
    return pieces


def sentence_text(article: Article, sentence: Sentence) -> str:
    """The sentence with runs of white space folded to one space, as it is embedded and indexed."""
    return _SPACE_RUN.sub(" ", article.text[sentence.start : sentence.end])


def make_chunks(
    sentence_texts: Sequence[str],
    token_counts: Sequence[int],
    heading: str = "",
    chunk_tokens: int = CHUNK_TOKENS,
    overlap: int = OVERLAP_SENTENCES,
) -> list[Chunk]:
    """Group consecutive sentences into chunks of about `chunk_tokens` word pieces, each chunk
    repeating the last `overlap` sentences of the one before. `heading` (the article's title) opens
    every chunk's text, so each chunk is read knowing what the article is about."""
    chunks: list[Chunk] = []
    budget = chunk_tokens - (len(heading.split()) * 2 if heading else 0)
    first = 0
    while first < len(sentence_texts):
        last, total = first, token_counts[first]
        while last + 1 < len(sentence_texts) and total + token_counts[last + 1] <= budget:
            last += 1
            total += token_counts[last]
        chunks.append(_chunk(sentence_texts, first, last, heading))
        if last + 1 >= len(sentence_texts):
            break
        first = max(first + 1, last + 1 - overlap)
    return chunks


def _chunk(sentence_texts: Sequence[str], first: int, last: int, heading: str) -> Chunk:
    prefix = f"{heading}\n" if heading else ""
    spans, position = [], len(prefix)
    for text in sentence_texts[first : last + 1]:
        spans.append((position, position + len(text)))
        position += len(text) + len(CHUNK_JOINER)
    return Chunk(first, last, prefix + CHUNK_JOINER.join(sentence_texts[first : last + 1]), tuple(spans))


def chunk_article(article: Article, count_tokens: Callable[[list[str]], list[int]]) -> tuple[list[Sentence], list[Chunk]]:
    """The article's sentences and its chunks, sized with the embedding model's own tokenizer."""
    sentences = split_sentences(article)
    texts = [sentence_text(article, sentence) for sentence in sentences]
    return sentences, make_chunks(texts, count_tokens(texts), heading=_SPACE_RUN.sub(" ", article.title))
