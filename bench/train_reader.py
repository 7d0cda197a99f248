"""Train the short-answer reader (qa/models/minilm-l6-reader): all six layers of all-MiniLM-L6-v2 with a span head,
on SQuAD v1.1 train. It reads the question (with what the conversation lends it) against one sentence after its
article's title, and points at the first and last word piece of the short answer in the sentence, or at [CLS] when the
sentence holds none.

Data: ../shared/train/squad-train.jsonl.gz (SQuAD v1.1 train, CC BY-SA 4.0), which shares no article with any
development set. Development sets are not read here. The examples are bench/train_reranker.py's span examples: every
question of every article, shaped like a conversation's (an earlier question of its paragraph and its answer as the
history, a repeated name sometimes replaced by a pronoun), with the sentence that holds its answer; and for
NEGATIVE_SHARE of them another sentence of the paragraph, without the answer, to be read as holding none. The
reranker's HELD_OUT articles are held out here too.

Fixed seeds; a progress bar; every EVAL_EVERY steps, and at the end, the held-out scores (exact match and F1 of the
short answer in its own sentence, and the share of sentences without the answer read as holding none) are logged
with a checkpoint, from which `--resume` goes on. Then export: ONNX (each token's start and end logits), int8
weights, the tokenizer and settings.json into qa/models/minilm-l6-reader/, scored again as exported. Then
bench/calibrate_short_answers.py sets the confidence below which no short answer is given.

    .venv/bin/python bench/train_reader.py --minutes 80          # one epoch, about 80 minutes on 2 cores
    .venv/bin/python bench/train_reader.py --resume --minutes 60  # go on from the checkpoint
    .venv/bin/python bench/train_reader.py --export-only          # export the checkpoint again
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm
from training import run_schedule, schedule_and_resume
from train_reranker import (  # bench/ is on the path as a script
    SEED, TRAINING_DATA, SpanExample, base_model_path, export_int8, held_out_of, shuffled_titles, span_batch,
    span_cross_entropy, span_examples, span_scores, squad_articles, tokenizer,
)

from qa.config import PACKAGED_MODEL
from qa.reader import DEFAULT_READER, NULL_TOKEN, READER, Reader
from qa.reranker import KIND_KEY, MODELS_DIR, SETTINGS_FILE, passage_prefix, passage_text, span_in

ROOT = Path(__file__).resolve().parents[1]
WORK = Path.home() / ".cache" / "qa-bench" / "reader"
RESULTS = ROOT / "bench" / "results" / "reader.json"
CHECKPOINT = "checkpoint.pt"
NEGATIVE_SHARE = 0.3
"""Share of questions that also come with a sentence of their paragraph that does not hold the answer."""
PAIRS_PER_STEP = 32
LENGTH_GROUP = 50
"""Batches are made of examples of about the same length, sorted within runs of this many batches."""
LEARNING_RATE = 5e-5
HEAD_LEARNING_RATE = 5e-4
"""The new span head learns faster than the body it sits on."""
WARMUP_STEPS = 200
EVAL_EVERY = 500
EVAL_QUESTIONS = 800
QUESTION_TIME_TOKENS = 128
"""Pairs are cut to this many tokens, in training and at question time."""

logger = logging.getLogger("train_reader")


def span_reader():
    """all-MiniLM-L6-v2 with a linear span head on every token (its start and end logits); word embeddings frozen."""
    import torch
    from transformers import AutoModel

    class SpanReader(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = AutoModel.from_pretrained(base_model_path(), attn_implementation="eager")
            self.span = torch.nn.Linear(self.body.config.hidden_size, 2)
            self.body.embeddings.word_embeddings.weight.requires_grad_(False)

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.body(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            start, end = self.span(tokens).unbind(-1)
            return start, end

    return SpanReader()


def reader_loss(model, tokens, examples: list[SpanExample]):
    """Cross-entropy of the answer's first and last token (or [CLS]) among the tokens the reader may point at."""
    feeds, allowed, first, last, _ = span_batch(tokens, examples, NULL_TOKEN)
    start, end = model(**feeds)
    return span_cross_entropy(start, end, allowed, first, last)


def readings(model, tokens, examples: list[SpanExample]):
    """The model's short answer in each example's sentence and its probability, decoded as qa.reader.Reader does."""
    import torch

    model.eval()
    found = []
    with torch.no_grad():
        for first in range(0, len(examples), PAIRS_PER_STEP):
            batch = examples[first: first + PAIRS_PER_STEP]
            feeds, _, _, _, encodings = span_batch(tokens, batch, NULL_TOKEN)
            start, end = (values.numpy() for values in model(**feeds))
            for row, (encoding, example) in enumerate(zip(encodings, batch)):
                passage = passage_text(example.title, example.sentence)
                found.append(span_in(encoding, passage, len(passage_prefix(example.title)), start[row], end[row], NULL_TOKEN))
    model.train()
    return found


def held_out_scores(examples: list[SpanExample], found: list) -> dict:
    """On held-out sentences that hold the answer: exact match and F1 of the short answer read there; on those that
    do not: the share read as holding none (the answer's probability under one half)."""
    answered = [(e, span) for e, span in zip(examples, found) if e.start >= 0]
    report = span_scores([e for e, _ in answered], [e.sentence[s.start: s.end] if s else "" for e, s in answered])
    without = [span for e, span in zip(examples, found) if e.start < 0]
    report["without_answer"] = len(without)
    report["without_answer_read_as_none"] = float(np.mean([s is None or s.probability < 0.5 for s in without]))
    report["with_answer_probability_over_half"] = float(np.mean([s is not None and s.probability >= 0.5 for _, s in answered]))
    return report


def length_grouped(examples: list[SpanExample], rng: random.Random) -> list[list[SpanExample]]:
    """The examples shuffled into batches of PAIRS_PER_STEP, each made of examples of about the same length (sorted
    within runs of LENGTH_GROUP batches), in a shuffled order: a batch is padded to its longest pair, so this does
    the same work on fewer padding tokens."""
    order = list(examples)
    rng.shuffle(order)
    run = PAIRS_PER_STEP * LENGTH_GROUP
    batches = []
    for first in range(0, len(order), run):
        group = sorted(order[first: first + run], key=lambda e: len(e.question) + len(e.title) + len(e.sentence))
        batches.extend(group[i: i + PAIRS_PER_STEP] for i in range(0, len(group), PAIRS_PER_STEP))
    rng.shuffle(batches)
    return batches


def train(work: Path, training: list[SpanExample], held_out: list[SpanExample], minutes: float, epochs: int,
          steps: int | None, resume: bool):
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    tokens = tokenizer()
    model = span_reader()
    body = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("span.")]
    optimizer = torch.optim.AdamW([{"params": body, "lr": LEARNING_RATE},
                                   {"params": list(model.span.parameters()), "lr": HEAD_LEARNING_RATE}], weight_decay=0.01)
    per_epoch = math.ceil(len(training) / PAIRS_PER_STEP)
    total = min(per_epoch * epochs, steps or per_epoch * epochs)
    checkpoint = work / CHECKPOINT
    schedule, step, log = schedule_and_resume(model, optimizer, WARMUP_STEPS, total, checkpoint, resume)

    def evaluate(at: int, label: str) -> None:
        report = held_out_scores(held_out, readings(model, tokens, held_out))
        log.append({"step": at, "at": label, **report})
        logger.info("%s, step %d: held out, in the answer's sentence EM %.3f F1 %.3f; sentences without it read as "
                    "none %.3f", label, at, report["exact_match"], report["f1"], report["without_answer_read_as_none"])
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "step": at, "log": log}, checkpoint)

    def train_step(batch: list[SpanExample]) -> dict[str, str]:
        loss = reader_loss(model, tokens, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*body, *model.span.parameters()], 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        return {"loss": f"{loss.item():.3f}"}

    if not log:
        evaluate(step, "start")
    model.train()
    run_schedule(step, total, per_epoch, minutes, EVAL_EVERY,
                 lambda epoch: length_grouped(training, random.Random(SEED + epoch)), train_step, evaluate)
    return model, tokens, log


def export(model, tokens, held_out: list[SpanExample], log: list[dict], trained_on: dict) -> dict:
    """The model as an int8 ONNX graph with its tokenizer and settings in qa/models/DEFAULT_READER, scored on the
    held-out examples as exported."""
    target = MODELS_DIR / DEFAULT_READER
    staging = export_int8(model, tokens, target, ["start", "end"], {"start": {0: "batch", 1: "tokens"},
                                                                   "end": {0: "batch", 1: "tokens"}})
    (staging / SETTINGS_FILE).write_text(json.dumps({KIND_KEY: READER, "max_tokens": QUESTION_TIME_TOKENS}))
    exported = Reader(staging)
    found = [exported.read(e.question, [(e.title, e.sentence)])[0] for e in tqdm(held_out, desc="scoring the export")]
    report = held_out_scores(held_out, found)
    settings = {KIND_KEY: READER, "max_tokens": QUESTION_TIME_TOKENS, "layers": 6, "base": PACKAGED_MODEL, "trained_on": trained_on,
                "held_out_int8": report}
    (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    RESULTS.write_text(json.dumps({"settings": settings, "log": log}, indent=1))
    logger.info("exported to %s: held out, in the answer's sentence EM %.3f F1 %.3f; without it read as none %.3f",
                target, report["exact_match"], report["f1"], report["without_answer_read_as_none"])
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=WORK, help="where the checkpoint goes (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=80, help="stop training after this long (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training examples (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="the schedule's length in steps, when shorter than the epochs "
                        "(a seeded sample of the examples; default: the epochs)")
    parser.add_argument("--resume", action="store_true", help="go on from the checkpoint in --work")
    parser.add_argument("--export-only", action="store_true", help="export the checkpoint in --work without training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    articles = squad_articles()
    held_out_titles = set(held_out_of(shuffled_titles(articles)))
    examples = span_examples(articles, held_out_titles, NEGATIVE_SHARE)
    training = [e for e in examples if not e.held_out]
    held_out = [e for e in examples if e.held_out][:EVAL_QUESTIONS]
    logger.info("%d training examples (%d without the answer), %d held out", len(training),
                sum(e.start < 0 for e in training), len(held_out))
    if args.export_only:
        import torch

        state = torch.load(args.work / CHECKPOINT, weights_only=False)
        model, tokens, log = span_reader(), tokenizer(), state["log"]
        model.load_state_dict(state["model"])
    else:
        model, tokens, log = train(args.work, training, held_out, args.minutes, args.epochs, args.steps, args.resume)
    export(model, tokens, held_out, log, {"data": TRAINING_DATA, "examples": len(training),
                                          "steps": log[-1]["step"] if log else 0})


if __name__ == "__main__":
    main()
