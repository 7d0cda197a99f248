"""Fine-tune the embedding model (all-MiniLM-L6-v2) on SQuAD v1.1 train, as qa's first stage reads it: questions
(shaped like a conversation's, and read against it as qa reads them) against chunks, against each sentence pooled
inside its chunk (late chunking), and against sentences on their own.

Data: ../shared/train/squad-train.jsonl.gz (SQuAD v1.1 train, CC BY-SA 4.0); the reranker's HELD_OUT articles
(bench/train_reranker.py, same seeded shuffle) are kept back and scored, every other article is trained on. Articles
are parsed and chunked by qa itself (qa.articles.parse_article, qa.chunks.chunk_article). A question's history is its
paragraph's earlier questions (bench/train_reranker.earlier_turns), a name it repeats from the last turn sometimes
becomes a pronoun, and qa.followup.resolve_question then gives the text qa searches with.

A step takes ARTICLES_PER_STEP articles and QUESTIONS_PER_ARTICLE questions of different paragraphs from each, so a
question's negatives include chunks and sentences of its own article. The loss is the mean of three in-batch softmax
losses (scale SCALE): question against every sentence vector pooled in the step's chunks, against the chunks, and
against the answer sentences and one other sentence of each chunk encoded on their own. Word embeddings stay frozen,
so only the layers above them change. Fixed seeds; a progress bar; held-out scores (hit@3 of sentences by each vector
and by their sum, hit@1 of chunks) logged every EVAL_EVERY steps with a checkpoint that `--resume` goes on from.
At the end the model is written as a sentence-transformers folder in --work, and the weights it changed (all but the
word embeddings and the unused pooler) go in float16 to qa/models/minilm-l6-squad, qa's default model, which qa puts
into the packaged model's weights when it loads it. Rebuild the indexes after, then refit what reads its cosines:
bench/train_ranker.py, bench/calibrate_abstention.py (with and without the reranker), bench/calibrate_short_answers.py.

    .venv/bin/python bench/train_encoder.py --minutes 70            # the 1,000-step schedule (3.4 s a step) on 2 cores
    .venv/bin/python bench/train_encoder.py --resume --minutes 60   # go on from the checkpoint
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qa.articles import parse_article
from qa.chunks import chunk_article, sentence_text
from qa.config import DEFAULT_MODEL, PACKAGED_MODEL
from qa.embeddings import CHANGED_WEIGHTS_FILE, SHIPPED_MODELS, WEIGHTS_FILE
from qa.followup import resolve_question
from train_reranker import (
    SEED, TRAINING_DATA, base_model_path, earlier_turns, held_out_of, readable_title, shaped, shuffled_titles,
    squad_articles,
)

WORK = Path.home() / ".cache" / "qa-bench" / "encoder"
RESULTS = Path(__file__).resolve().parent / "results" / "encoder.json"
CHECKPOINT = "checkpoint.pt"
MODEL_FOLDER = "model"
EXAMPLES_FILE = "examples.json.gz"
TRAINING_FILE = "training.json"
ARTICLES_PER_STEP = 8
QUESTIONS_PER_ARTICLE = 2
SCALE = 20.0
LEARNING_RATE = 2e-5
WARMUP_STEPS = 100
EVAL_EVERY = 250
EVAL_QUESTIONS = 800
MAX_TOKENS = 256
EVAL_BATCH = 64
"""Texts a batch when scoring the held-out questions (chunks: a quarter of it)."""

logger = logging.getLogger("train_encoder")


@dataclass
class Passage:
    """One article as qa chunks it: its sentences' texts, and each chunk's text with the sentences it holds."""

    sentences: list[str]
    chunks: list[str]
    spans: list[tuple[tuple[int, int], ...]]
    """Where each of the chunk's sentences lies in its text."""
    firsts: list[int]
    """The index of each chunk's first sentence."""


@dataclass
class Example:
    """A question as qa searches it, with its article and the sentence holding its answer."""

    question: str
    article: int
    sentence: int
    paragraph: int


def passages_and_examples(articles: dict, titles: list[str], count_tokens) -> tuple[list[Passage], list[Example]]:
    """Every article chunked by qa, and every question whose answer lies inside one sentence."""
    random.seed(SEED + 2)
    passages, examples = [], []
    for number, title in enumerate(tqdm(titles, desc="chunking", unit="article")):
        text, places = readable_title(title) + "\n\n", []
        for context, _ in articles[title]:
            places.append(len(text))
            text += context + "\n\n"
        article = parse_article(text, f"{number}.txt", hashlib.sha256(text.encode()).hexdigest())
        sentences, chunks = chunk_article(article, count_tokens)
        passages.append(Passage([sentence_text(article, s) for s in sentences],
                                [c.text for c in chunks], [c.sentence_spans for c in chunks], [c.first for c in chunks]))
        for paragraph, ((context, rows), offset) in enumerate(zip(articles[title], places)):
            for turn, row in enumerate(rows):
                history = earlier_turns(context, rows, turn)
                start = offset + row["answer_starts"][0]
                end = start + len(row["answers"][0])
                holder = next((k for k, s in enumerate(sentences) if s.start <= start and end <= s.end), None)
                if holder is not None:
                    asked = shaped(row["question"].strip(), history)
                    examples.append(Example(resolve_question(asked, history), number, holder, paragraph))
    return passages, examples


def cached_examples(work: Path, articles: dict, titles: list[str], count_tokens) -> tuple[list[Passage], list[Example]]:
    """passages_and_examples, kept in `work` after the first run (chunking every article takes minutes)."""
    target = work / EXAMPLES_FILE
    if target.exists():
        with gzip.open(target, "rt", encoding="utf-8") as lines:
            saved = json.load(lines)
        return ([Passage(**p) for p in saved["passages"]], [Example(**e) for e in saved["examples"]])
    passages, examples = passages_and_examples(articles, titles, count_tokens)
    with gzip.open(target, "wt", encoding="utf-8") as out:
        json.dump({"passages": [p.__dict__ for p in passages], "examples": [e.__dict__ for e in examples]}, out)
    return passages, examples


def chunks_holding(passage: Passage, sentence: int) -> list[int]:
    return [c for c, (first, spans) in enumerate(zip(passage.firsts, passage.spans)) if first <= sentence < first + len(spans)]


def steps_of(examples: list[Example], rng: random.Random) -> list[list[Example]]:
    """The epoch's steps: each takes ARTICLES_PER_STEP articles, and QUESTIONS_PER_ARTICLE questions of different
    paragraphs from each."""
    by_article: dict[int, list[Example]] = {}
    for example in examples:
        by_article.setdefault(example.article, []).append(example)
    for questions in by_article.values():
        rng.shuffle(questions)
    pairs = []
    for questions in by_article.values():
        while len(questions) >= QUESTIONS_PER_ARTICLE:
            first = questions.pop()
            other = next((q for q in questions if q.paragraph != first.paragraph), questions[-1])
            questions.remove(other)
            pairs.append([first, other])
    rng.shuffle(pairs)
    steps, filling = [], []
    for pair in pairs:
        step = next((s for s in filling if all(p[0].article != pair[0].article for p in s)), None)
        if step is None:
            step = []
            filling.append(step)
        step.append(pair)
        if len(step) == ARTICLES_PER_STEP:
            steps.append([question for p in step for question in p])
            filling.remove(step)
    return steps


class Encoder:
    """all-MiniLM-L6-v2 in PyTorch, with word embeddings frozen, giving qa's three kinds of vector."""

    def __init__(self):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.body = AutoModel.from_pretrained(base_model_path())
        self.body.embeddings.word_embeddings.weight.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(base_model_path())

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    def _tokens(self, texts: list[str]):
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                                 return_offsets_mapping=True, return_tensors="pt")
        offsets = encoded.pop("offset_mapping").numpy()
        return self.body(**encoded).last_hidden_state, encoded["attention_mask"], offsets

    def texts(self, texts: list[str]):
        """Unit vectors of texts on their own (questions, sentences), mean-pooled."""
        tokens, mask, _ = self._tokens(texts)
        return self.torch.nn.functional.normalize(_mean_pooled(tokens, mask), dim=-1)

    def chunks(self, texts: list[str], spans: list[tuple[tuple[int, int], ...]]):
        """Unit vectors of chunks, and of every sentence of them pooled from the chunk's tokens, in chunk order."""
        torch = self.torch
        tokens, mask, offsets = self._tokens(texts)
        chunk_vectors = _mean_pooled(tokens, mask)
        batch, width, _ = tokens.shape
        pooling = np.zeros((sum(len(s) for s in spans), batch * width), np.float32)
        row = 0
        for chunk, chunk_spans in enumerate(spans):
            real = (offsets[chunk, :, 1] > offsets[chunk, :, 0]) & (mask[chunk].numpy() > 0)
            for start, end in chunk_spans:
                inside = real & (offsets[chunk, :, 0] >= start) & (offsets[chunk, :, 1] <= end)
                if inside.any():
                    pooling[row, chunk * width: (chunk + 1) * width] = inside / inside.sum()
                else:
                    pooling[row, chunk * width: (chunk + 1) * width] = mask[chunk].numpy() / mask[chunk].sum().item()
                row += 1
        sentence_vectors = torch.from_numpy(pooling) @ tokens.reshape(batch * width, -1)
        unit = torch.nn.functional.normalize
        return unit(chunk_vectors, dim=-1), unit(sentence_vectors, dim=-1)


def _mean_pooled(tokens, mask):
    """Each text's token vectors averaged over its real tokens."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def step_loss(encoder: Encoder, passages: list[Passage], step: list[Example], rng: random.Random):
    """The mean of the three in-batch softmax losses for one step's questions."""
    chosen = [(example, rng.choice(chunks_holding(passages[example.article], example.sentence))) for example in step]
    chunk_keys, chunk_owners, sentence_keys, sentence_owners, alone_keys, alone_owners, alone_texts = ([] for _ in range(7))
    for row, (example, chunk) in enumerate(chosen):
        passage = passages[example.article]
        first, count = passage.firsts[chunk], len(passage.spans[chunk])
        chunk_keys.append((example.article, chunk))
        chunk_owners.append(row)
        sentence_keys.extend((example.article, k) for k in range(first, first + count))
        sentence_owners.extend([row] * count)
        others = [k for k in range(first, first + count) if k != example.sentence]
        for sentence in [example.sentence, *([rng.choice(others)] if others else [])]:
            alone_keys.append((example.article, sentence))
            alone_owners.append(row)
            alone_texts.append(passage.sentences[sentence])
    questions = encoder.texts([e.question for e in step])
    chunk_vectors, sentence_vectors = encoder.chunks([passages[e.article].chunks[c] for e, c in chosen],
                                                     [passages[e.article].spans[c] for e, c in chosen])
    answer = [{(e.article, e.sentence)} for e, _ in chosen]
    holding = [{(e.article, c) for c in chunks_holding(passages[e.article], e.sentence)} for e, _ in chosen]
    losses = [softmax_loss(questions, sentence_vectors, sentence_keys, sentence_owners, answer),
              softmax_loss(questions, chunk_vectors, chunk_keys, chunk_owners, holding),
              softmax_loss(questions, encoder.texts(alone_texts), alone_keys, alone_owners, answer)]
    return sum(losses) / len(losses)


def softmax_loss(questions, candidates, keys: list[tuple], owners: list[int], positives: list[set]):
    """Cross-entropy of each question's own positive candidate (the one from its own chunk) among all candidates,
    with its other positives (the same sentence or chunk brought by another question) masked out."""
    import torch

    logits = SCALE * questions @ candidates.T
    masked = torch.zeros_like(logits, dtype=torch.bool)
    targets = []
    for row, wanted in enumerate(positives):
        hits = [j for j, key in enumerate(keys) if key in wanted]
        target = next(j for j in hits if owners[j] == row)
        targets.append(target)
        for j in hits:
            masked[row, j] = j != target
    return torch.nn.functional.cross_entropy(logits.masked_fill(masked, -1e4), torch.tensor(targets))


def held_out_scores(encoder: Encoder, passages: list[Passage], examples: list[Example]) -> dict:
    """hit@3 of the answer sentence among all held-out sentences by its in-chunk vector (best over the chunks holding
    it), its own vector, and their sum; hit@1 of a chunk holding it among all held-out chunks."""
    torch = encoder.torch
    articles = sorted({e.article for e in examples})
    chunk_rows, chunk_vectors, in_chunk, alone, keys = [], [], {}, [], []
    with torch.no_grad():
        for article in articles:
            passage = passages[article]
            for first in range(0, len(passage.chunks), EVAL_BATCH // 4):
                last = first + EVAL_BATCH // 4
                vectors, sentence_vectors = encoder.chunks(passage.chunks[first:last], passage.spans[first:last])
                chunk_rows.extend((article, c) for c in range(first, first + len(vectors)))
                chunk_vectors.append(vectors.numpy())
                held = [(article, passage.firsts[c] + k) for c in range(first, first + len(vectors))
                        for k in range(len(passage.spans[c]))]
                for key, vector in zip(held, sentence_vectors.numpy()):
                    in_chunk.setdefault(key, []).append(vector)
            for first in range(0, len(passage.sentences), EVAL_BATCH):
                alone.append(encoder.texts(passage.sentences[first: first + EVAL_BATCH]).numpy())
            keys.extend((article, k) for k in range(len(passage.sentences)))
        questions = np.concatenate([encoder.texts([e.question for e in examples[i: i + EVAL_BATCH]]).numpy()
                                    for i in range(0, len(examples), EVAL_BATCH)])
    all_chunks, alone_vectors = np.concatenate(chunk_vectors), np.concatenate(alone)
    chunk_scores = questions @ all_chunks.T
    alone_scores = questions @ alone_vectors.T
    in_chunk_scores = np.stack([np.max(questions @ np.stack(in_chunk[key]).T, axis=1) for key in keys], axis=1)
    position = {key: j for j, key in enumerate(keys)}

    def hit(scores: np.ndarray, depth: int, right) -> float:
        return float(np.mean([right(example, np.argsort(-row)[:depth]) for example, row in zip(examples, scores)]))

    def sentence_right(example: Example, top) -> bool:
        return position[(example.article, example.sentence)] in top

    def chunk_right(example: Example, top) -> bool:
        holding = chunks_holding(passages[example.article], example.sentence)
        return any(chunk_rows[j][0] == example.article and chunk_rows[j][1] in holding for j in top)

    return {"questions": len(examples), "in_chunk@3": hit(in_chunk_scores, 3, sentence_right),
            "alone@3": hit(alone_scores, 3, sentence_right), "both@3": hit(in_chunk_scores + alone_scores, 3, sentence_right),
            "chunk@1": hit(chunk_scores, 1, chunk_right)}


def write_results(log: list[dict], training: list[Example], steps: int) -> None:
    """The run's settings and its held-out scores at every evaluation, in bench/results/encoder.json."""
    RESULTS.write_text(json.dumps({
        "data": TRAINING_DATA, "training_questions": len(training), "schedule_steps": steps,
        "steps_run": log[-1]["step"] if log else 0, "questions_per_step": ARTICLES_PER_STEP * QUESTIONS_PER_ARTICLE,
        "learning_rate": LEARNING_RATE, "scale": SCALE, "held_out_log": log,
    }, indent=1), encoding="utf-8")


def save_model(encoder: Encoder, folder: Path) -> None:
    """The trained weights as a sentence-transformers folder (the packaged model's modules, these weights)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base_model_path(), device="cpu")
    model[0].auto_model.load_state_dict(encoder.body.state_dict())
    model.save(str(folder))


def ship_changed_weights(folder: Path, log: list[dict]) -> None:
    """The weights of the trained model in `folder` that differ from the packaged model's, in float16, into
    qa/models/DEFAULT_MODEL (with TRAINING_FILE, what they were trained on and their held-out scores)."""
    from safetensors.numpy import load_file, save_file

    base = load_file(str(Path(base_model_path()) / WEIGHTS_FILE))
    trained = load_file(str(folder / WEIGHTS_FILE))
    changed = {key: value.astype(np.float16) for key, value in trained.items()
               if value.dtype == np.float32 and not np.array_equal(value, base[key])}
    target = SHIPPED_MODELS / DEFAULT_MODEL
    target.mkdir(parents=True, exist_ok=True)
    save_file(changed, str(target / CHANGED_WEIGHTS_FILE), metadata={"format": "pt"})
    (target / TRAINING_FILE).write_text(json.dumps({
        "base": PACKAGED_MODEL, "trained_by": "bench/train_encoder.py", "data": TRAINING_DATA,
        "changed_parameters": int(sum(value.size for value in changed.values())), "held_out": log[-1] if log else None,
    }, indent=1), encoding="utf-8")
    logger.info("%d changed tensors written to %s", len(changed), target / CHANGED_WEIGHTS_FILE)


def train(encoder: Encoder, work: Path, passages: list[Passage], training: list[Example], held_out: list[Example],
          minutes: float, steps: int, resume: bool) -> list[dict]:
    """Train from the packaged weights (or the checkpoint) for `steps` steps or `minutes`; returns the score log."""
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    parameters = [p for p in encoder.body.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS) * max(0.0, 1 - step / steps))
    step, log = 0, []
    checkpoint = work / CHECKPOINT
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        encoder.body.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, log = state["step"], state["log"]
        logger.info("resumed at step %d of %d", step, steps)
    plan: list[list[Example]] = []
    while len(plan) < steps:
        plan.extend(steps_of(training, random.Random(SEED + len(plan))))
    evaluated = held_out[:EVAL_QUESTIONS]

    def evaluate(label: str) -> None:
        encoder.body.eval()
        log.append({"step": step, "at": label, **held_out_scores(encoder, passages, evaluated)})
        encoder.body.train()
        logger.info("step %d: %s", step, json.dumps(log[-1]))
        torch.save({"model": encoder.body.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "step": step, "log": log}, checkpoint)

    if not log:
        evaluate("start")
    encoder.body.train()
    deadline = time.monotonic() + minutes * 60
    bar = tqdm(total=steps, initial=step, desc="training", unit="step")
    while step < steps and time.monotonic() < deadline:
        loss = step_loss(encoder, passages, plan[step], random.Random(SEED + step))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % EVAL_EVERY == 0:
            evaluate("eval")
    bar.close()
    if not log or log[-1]["step"] != step:
        evaluate("end")
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=WORK, help="where the checkpoint and the model go")
    parser.add_argument("--minutes", type=float, default=70, help="stop training after this long (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1000, help="steps the schedule runs over (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="go on from the checkpoint in --work")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    articles = squad_articles()
    titles = shuffled_titles(articles)
    held_out_titles = set(held_out_of(titles))
    encoder = Encoder()
    passages, examples = cached_examples(args.work, articles, titles, encoder.count_tokens)
    held_out = [e for e in examples if titles[e.article] in held_out_titles]
    training = [e for e in examples if titles[e.article] not in held_out_titles]
    random.Random(SEED).shuffle(held_out)
    logger.info("%d articles, %d training questions, %d held out", len(passages), len(training), len(held_out))
    log = train(encoder, args.work, passages, training, held_out, args.minutes, args.steps, args.resume)
    write_results(log, training, args.steps)
    save_model(encoder, args.work / MODEL_FOLDER)
    ship_changed_weights(args.work / MODEL_FOLDER, log)


if __name__ == "__main__":
    main()
