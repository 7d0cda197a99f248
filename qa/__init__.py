"""qa: answers to questions about a folder of news articles, made of verbatim quotes cited to their place."""

from .answers import Answer, Citation, Turn, answer
from .articles import SkippedFile, article_text
from .index import IndexedArticle, IndexReport, IndexSummary, build_index, describe_index

__all__ = [
    "Answer",
    "Citation",
    "IndexReport",
    "IndexSummary",
    "IndexedArticle",
    "SkippedFile",
    "Turn",
    "answer",
    "article_text",
    "build_index",
    "describe_index",
]
