"""Follow-up questions: reading a question against the earlier turns of a conversation (its words, its articles)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import numpy as np

from .keywords import query_terms
from .retrieval import Focus

if TYPE_CHECKING:
    from .retrieval import LoadedIndex

MIN_CONTENT_WORDS = 2
"""A question with fewer words of its own than this ("Why?", "And Biden?") is read as a follow-up."""
MAX_CONTEXT_WORDS = 8
"""At most this many words of context are added, so that the follow-up's own words still lead retrieval."""
CONTEXT_PREFIX = "Context:"

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing done down during each else few for from further had has have having here
    how i if in into is isn't was wasn't were weren't will would shall should may might must of off on once only or
    other our ours out over own said same say says so some such than that the then there these they this those through
    to too under until up very we what when where which while who whom whose why with you your yours me my mine us
    tell told please know explain describe give happened happen happens anything something mean means not no nor
    just more most much many whether another""".split()
)
REFERRING_PRONOUNS = frozenset(
    "it its itself they them their theirs themselves he him his himself she her hers herself this these those".split()
)
PERSON_PRONOUNS = frozenset("he him his himself she her hers herself".split())
BOUND_PRONOUNS = frozenset("his her hers himself herself its itself their theirs themselves".split())
"""Possessive and reflexive pronouns, which a name earlier in the same question usually owns ("What Panther tore his
ACL?", "How did the Carolina Panthers do in their season?"): after one, they do not refer back."""
CONTINUATION_OPENERS = (
    "and",
    "also",
    "but",
    "so",
    "then",
    "what about",
    "how about",
    "what else",
    "anything else",
    "any other",
)
NON_REFERRING_AFTER_THERE = frozenset(
    "is are was were be been will would has have had a an any some no many much more".split()
)
THAT_REFERS_AFTER = frozenset(
    "about after before of at in on for from with by during since like is was are were did does do".split()
)

FOCUS_DECAY = 0.8
"""Each earlier turn counts this much less than the one after it when weighing the conversation's articles."""
CONVERSATION_SEARCH_WEIGHT = 0.5
"""The weight, in the focus, of the article that all the conversation's questions together match best (BM25)."""
LOCATE_DEPTH = 20
"""Chunks searched (BM25 on the turn's words) for the articles that hold a plain-text answer."""
MAX_LOCATED_ARTICLES = 3
"""A plain-text answer found in more articles than this ("yes", "two") says nothing about the focus."""
MIN_LOCATED_CHARS = 2
"""A plain-text answer shorter than this is not looked for."""
MAX_REMEMBERED_TURNS = 10_000
"""Turns whose places are remembered per index before the memory is cleared."""

_WORD = re.compile(r"\w+(?:[.'’\-]\w+)*")
_CITATION_MARK = re.compile(r"\[\d+\]")
_SENTENCE_OPENING = re.compile(r"[.!?…:;“\"(\n]")
_CONTRACTION = re.compile(r"['’](s|re|ve|ll|d|m)$")
_CITED_QUOTE = re.compile(r"(.+?)\s*\[\d+\](?:\n|$)")
"""A quote of qa's answer text, up to its citation mark (one quote a line)."""
QUOTATION_MARKS = "“”„‟\"'‘’«»"
"""Marks that open or close a quotation."""
_TYPOGRAPHIC = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "′": "'", "″": '"'})
_SPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True)
class EarlierTurn:
    """A turn of the conversation: the question, the answer's text, and the (path, start, end) spans it cited."""

    question: str
    answer: str
    cited: tuple[tuple[str, int, int], ...] = ()


def normalize(text: str) -> str:
    """Case-folded, typographic quotes made plain, white space folded: how answers are looked for in articles
    (and how `qa eval` compares quotes with gold answers)."""
    return _SPACE_RUN.sub(" ", text.translate(_TYPOGRAPHIC)).strip().casefold()


def read_conversation(index: LoadedIndex, question: str, turns: Sequence[EarlierTurn]) -> tuple[str, Focus]:
    """The text to search with and the conversation's focus: the articles its answers came from (the most recent
    weighing most) and the sentences where the last answer stands.

    An answer that cites spans (qa's own) is placed by its citations, the first weighing most. A plain-text answer
    (a reader's, or qa's text) is looked for in the articles that a BM25 search on its turn finds; one found in too
    many says nothing. The article that all the conversation's questions together match best is added too, so a
    conversation whose answers cannot be placed still has a focus.
    """
    if not turns:
        return question, Focus()
    search_text = resolve_question(question, [(turn.question, turn.answer) for turn in turns])
    weights: dict[int, float] = {}
    anchors: tuple[tuple[int, int], ...] = ()
    for age, turn in enumerate(reversed(turns)):
        places = _places(index, turn)
        if not places:
            continue
        anchors = anchors or tuple(places)
        articles = list(dict.fromkeys(article for article, _ in places))
        shares = np.array([1.0 / (rank + 1) if turn.cited else 1.0 for rank in range(len(articles))])
        for article, share in zip(articles, shares / shares.sum()):
            weights[article] = weights.get(article, 0.0) + FOCUS_DECAY**age * share
    for article in _searched_articles(index, " ".join([*(t.question for t in turns), question])):
        weights[article] = weights.get(article, 0.0) + CONVERSATION_SEARCH_WEIGHT
    top = max(weights.values(), default=1.0)
    focus = {article: weight / top for article, weight in weights.items()}
    return search_text, Focus(focus, anchors, is_followup(question))


def _searched_articles(index: LoadedIndex, text: str, depth: int = 1) -> list[int]:
    """The articles of the `depth` chunks that best match `text` by BM25, best first."""
    chunk_ids = index.reader.keyword_search(text, query_terms(text), depth)
    if not len(chunk_ids):
        return []
    chunks = index.reader.chunks(ids=chunk_ids)
    article_of = dict(zip(chunks.ids.tolist(), chunks.article.tolist()))
    return list(dict.fromkeys(article_of[int(chunk)] for chunk in chunk_ids))


_remembered_places: WeakKeyDictionary[LoadedIndex, dict[tuple, list[tuple[int, int]]]] = WeakKeyDictionary()


@lru_cache(maxsize=200_000)
def _word_key(text: str) -> str:
    """The words of `text`, normalised and space-separated, with a space at each end, for whole-word matching."""
    return f" {' '.join(_WORD.findall(normalize(text)))} "


@lru_cache(maxsize=10_000)
def _joined_key(sentences: tuple[str, ...]) -> str:
    """The word keys of an article's sentences as one string, for a quick test before looking sentence by sentence."""
    return f" {' '.join(_word_key(sentence).strip() for sentence in sentences)} "


def _places(index: LoadedIndex, turn: EarlierTurn) -> list[tuple[int, int]]:
    """Where a turn's answer stands, remembered per index: a conversation's earlier turns come back at every question."""
    remembered = _remembered_places.setdefault(index, {})
    if len(remembered) >= MAX_REMEMBERED_TURNS:
        remembered.clear()
    key = (turn.question, turn.answer, turn.cited)
    places = remembered.get(key)
    if places is None:
        places = remembered[key] = _cited_places(index, turn) if turn.cited else _located_places(index, turn)
    return places


def _cited_places(index: LoadedIndex, turn: EarlierTurn) -> list[tuple[int, int]]:
    """The (article, position) of the sentences inside the spans a turn cited."""
    places = []
    for path, start, end in turn.cited:
        article = index.article_id(path)
        if article is not None:
            sentences = index.article_sentences([article])
            inside = (sentences.start >= start) & (sentences.end <= end)
            places += [(article, int(position)) for position in sentences.position[inside]]
    return places


def _located_places(index: LoadedIndex, turn: EarlierTurn) -> list[tuple[int, int]]:
    """The (article, position) of the sentences that hold a plain-text answer, among the articles its turn's words
    lead to."""
    quotes = [quote.strip(QUOTATION_MARKS + " ") for quote in _CITED_QUOTE.findall(turn.answer)]
    pieces = [_word_key(piece) for piece in (quotes or [turn.answer])]
    pieces = [piece for piece in pieces if len(piece) >= MIN_LOCATED_CHARS + 2]
    if not pieces:
        return []
    articles = _searched_articles(index, f"{turn.question} {turn.answer}", LOCATE_DEPTH)
    sentences = index.article_sentences(articles)
    found: dict[int, list[int]] = {}
    for article in articles:
        rows = np.flatnonzero(sentences.article == article)
        article_key = _joined_key(tuple(sentences.text[row] for row in rows))
        if not any(piece in article_key for piece in pieces):
            continue
        for row in rows:
            sentence = _word_key(sentences.text[row])
            if any(piece in sentence or (len(sentence) > 20 and sentence in piece) for piece in pieces):
                found.setdefault(article, []).append(int(sentences.position[row]))
    if len(found) > MAX_LOCATED_ARTICLES:
        return []
    return [(article, position) for article, positions in found.items() for position in positions]


def resolve_question(question: str, history: Sequence[tuple[str, str]] | None) -> str:
    """The question to retrieve with: `question` itself, or, for a follow-up, the question with context appended.

    `history` holds the earlier turns as (question, answer_text) pairs, oldest first. A question is a follow-up
    when it refers back (a pronoun such as "it", "they", "he", but not "his" or "their" after a name of its own;
    "that" or "there" used on their own), opens like a continuation ("And…", "What about…") or has fewer than
    MIN_CONTENT_WORDS words of its own. Its context is the key words of the previous question (itself resolved the
    same way); when the question asks about a person ("he", "she"), the names in the previous answer come first,
    since that is whom it most likely means.
    """
    if not history or not is_followup(question):
        return question
    previous_question, previous_answer = history[-1][0], history[-1][1]
    previous = resolve_question(previous_question, history[:-1])
    terms = key_terms(previous)
    if _asks_about_person(question):
        terms = [name for name in names(previous_answer) if name.lower() not in previous.lower()] + terms
    context = _new_terms(terms, question)
    if not context:
        return question
    return f"{question} {CONTEXT_PREFIX} {' '.join(context)}"


def is_followup(question: str) -> bool:
    """Whether `question` leans on an earlier turn: it refers back, continues, or has almost no words of its own."""
    words = _words(question)
    lowered = [_base(word) for word in words]
    if not lowered:
        return False
    text = " ".join(lowered)
    if any(text == opener or text.startswith(opener + " ") for opener in CONTINUATION_OPENERS):
        return True
    bound = [named and word in BOUND_PRONOUNS for named, word in zip(_named_before(words, question), lowered)]
    if any(_refers_back(lowered, i) and not bound[i] for i in range(len(lowered))):
        return True
    return len(content_words(question)) < MIN_CONTENT_WORDS


def content_words(text: str) -> list[str]:
    """The words of `text` that carry meaning: not stopwords, not pronouns."""
    return [word for word in _words(text) if _base(word) not in STOPWORDS and _base(word) not in REFERRING_PRONOUNS]


def key_terms(question: str) -> list[str]:
    """A question's content words, in order, each once (case-insensitively); earlier added context is kept."""
    return _dedupe(content_words(question.replace(CONTEXT_PREFIX, " ")))


def names(text: str) -> list[str]:
    """Capitalised phrases in `text` ("Shigeru Ishiba", "U.S. President Joe Biden"), each once, in order.

    A phrase runs over words separated by spaces only (or by the dot of an abbreviation such as "U.S.").
    A capitalised stopword ("The", "In", "He") never starts one, and a lone capitalised word that starts a
    sentence or a quotation ("Today’s") is not taken for a name.
    """
    found: list[str] = []
    run: list[str] = []
    run_opens_sentence = False
    previous_end = 0
    for match in _WORD.finditer(_CITATION_MARK.sub(" ", text)):
        word, gap = match.group(), match.string[previous_end : match.start()]
        opens_sentence = previous_end == 0 or bool(_SENTENCE_OPENING.search(gap))
        previous_end = match.end()
        if run and gap.strip() == "." and "." in run[-1]:
            run[-1] += "."
        elif run and gap.strip():
            found.extend(_finished(run, run_opens_sentence))
            run = []
        if word[:1].isupper() and (run or word.lower() not in STOPWORDS):
            if not run:
                run_opens_sentence = opens_sentence
            run.append(word)
        elif run:
            found.extend(_finished(run, run_opens_sentence))
            run = []
    found.extend(_finished(run, run_opens_sentence))
    return _dedupe(found)


def _finished(run: list[str], opens_sentence: bool) -> list[str]:
    """The phrase a run of capitalised words makes, if it is a name."""
    return [" ".join(run)] if run and (len(run) > 1 or not opens_sentence) else []


def _refers_back(words: list[str], i: int) -> bool:
    """Whether the word at `i` points back to something said before."""
    word = words[i]
    following = words[i + 1] if i + 1 < len(words) else None
    if word in REFERRING_PRONOUNS:
        return True
    if word == "that":  # "about that", "was that meeting" refer back; "said that Japan…" introduces a clause
        return following is None or i == 0 or words[i - 1] in THAT_REFERS_AFTER
    if word == "there":  # "who was there" refers back; "is there a…" does not
        return following is None or following not in NON_REFERRING_AFTER_THERE
    return False


def _named_before(words: list[str], question: str) -> list[bool]:
    """For each word, whether a capitalised word other than the first comes before it (never in a question written
    in capitals throughout)."""
    if not any(character.islower() for character in question):
        return [False] * len(words)
    named, seen = [], False
    for position, word in enumerate(words):
        named.append(seen)
        seen = seen or (position > 0 and word[:1].isupper())
    return named


def _base(word: str) -> str:
    """A word lower-cased without a contraction's tail: "It's" and "what’s" read as "it" and "what"."""
    return _CONTRACTION.sub("", word.lower())


def _asks_about_person(question: str) -> bool:
    return any(_base(word) in PERSON_PRONOUNS for word in _words(question))


def _new_terms(terms: list[str], question: str) -> list[str]:
    """Terms whose words are not already in the question, cut to MAX_CONTEXT_WORDS words in all."""
    seen = {word.lower() for word in _words(question)}
    picked: list[str] = []
    count = 0
    for term in terms:
        words = [word for word in _words(term) if word.lower() not in seen]
        if not words or count + len(words) > MAX_CONTEXT_WORDS:
            continue
        seen.update(word.lower() for word in words)
        picked.append(" ".join(words))
        count += len(words)
    return picked


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for item in items:
        if item.lower() not in seen:
            seen.add(item.lower())
            kept.append(item)
    return kept


def _words(text: str) -> list[str]:
    return _WORD.findall(text)
