"""A synthetic news archive of any size, made of the BBC stories' sentences shuffled, for building and answering at scale.

Each article takes the sentence count of a random BBC story and that many sentences drawn from the stories of the
same category, in paragraphs of up to three; its title is the first words of its first sentence, its date line a
random day of 2015-2024, and it is written as CATEGORY/YEAR/NNNNNNN.txt under the output folder. Seeded: the same
arguments write the same archive. Nothing in it is true; it only has the shape, words and size of a news archive.

    .venv/bin/python bench/synthetic.py --count 100000 --out ~/archive-100k
"""

from __future__ import annotations

import argparse
import datetime
import random
import re
from pathlib import Path

from tqdm import tqdm

from build import BBC

from qa.articles import read_articles

SEED = 0
SENTENCES_PER_PARAGRAPH = 3
TITLE_WORDS = 8
FIRST_DAY = datetime.date(2015, 1, 1)
DAYS = 3652
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“‘'])")


def bbc_sentences(corpus: Path = BBC) -> tuple[dict[str, list[str]], list[int]]:
    """Every story's sentences by category, as qa reads the stories (their paragraphs, without title or date line),
    and each story's sentence count."""
    pools: dict[str, list[str]] = {}
    lengths = []
    for article in read_articles(corpus).articles:
        if "/" not in article.path:  # SOURCE.md and the like, beside the category folders
            continue
        paragraphs = [" ".join(article.text[start:end].split()) for start, end in article.paragraphs]
        sentences = [s for p in paragraphs for s in _SENTENCE_END.split(p) if len(s.split()) >= 4]
        pools.setdefault(article.path.split("/")[0], []).extend(sentences)
        lengths.append(len(sentences))
    return pools, lengths


def article_text(sentences: list[str], day: datetime.date) -> str:
    title = " ".join(re.sub(r"[^\w\s'-]", "", sentences[0]).split()[:TITLE_WORDS])
    paragraphs = [" ".join(sentences[i: i + SENTENCES_PER_PARAGRAPH])
                  for i in range(0, len(sentences), SENTENCES_PER_PARAGRAPH)]
    return f"{title}\n\n{day.day} {day:%B %Y}\n\n" + "\n\n".join(paragraphs) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, required=True, help="articles to write")
    parser.add_argument("--out", type=Path, required=True, help="folder to write them into (created)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    write_archive(args.count, args.out)


def write_archive(count: int, out: Path) -> list[Path]:
    """Write the archive's first `count` articles into `out`, and remove any article of a larger archive written there
    before; their paths, in order (the first N of any larger archive are the same N articles)."""
    pools, lengths = bbc_sentences()
    categories = sorted(pools)
    rng = random.Random(SEED)
    paths = []
    for number in tqdm(range(count), desc="writing articles", unit="article"):
        category = rng.choice(categories)
        sentences = rng.sample(pools[category], max(1, rng.choice(lengths)))
        day = FIRST_DAY + datetime.timedelta(days=rng.randrange(DAYS))
        path = out / category / str(day.year) / f"{number:07d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(article_text(sentences, day), encoding="utf-8")
        paths.append(path)
    kept = set(paths)
    for beyond in [path for path in out.rglob("*.txt") if path not in kept]:
        beyond.unlink()
    return paths


if __name__ == "__main__":
    main()
