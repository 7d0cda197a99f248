"""The core path, as a user meets it: build an index from article files, ask, get verbatim cited quotes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import qa
from qa.articles import read_articles
from qa.evaluate import citation_is_intact, evaluate, is_hit, load_questions
import qa.store.embedded as qa_index
from qa.store.embedded import SEGMENTS_DIR, current_generation, read_manifest

from common import DEV, SEEDS, SHARED, copy_seeds

BBC = SHARED / "corpora" / "bbc"
FURNITURE_MARK = '"World" POPULAR ARTICLE'


@pytest.fixture(scope="module")
def seeds_index(tmp_path_factory) -> str:
    index_dir = tmp_path_factory.mktemp("seeds-index")
    report = qa.build_index(SEEDS, index_dir)
    assert report.added == 2 and report.chunks_embedded > 0
    return str(index_dir)


def test_answer_quotes_verbatim_with_exact_offsets(seeds_index):
    reply = qa.answer("Where did the leaders of Japan, the United States and South Korea meet in November 2024?", index_dir=seeds_index)
    assert not reply.abstained
    assert 1 <= len(reply.citations) <= 3
    assert any("Lima" in c.quote for c in reply.citations)
    for number, citation in enumerate(reply.citations, start=1):
        assert Path(citation.path).read_text(encoding="utf-8")[citation.start : citation.end] == citation.quote
        assert citation.title and f"[{number}]" in reply.text
    assert reply.citations[0].date == "15:06 JST, November 16, 2024" or "Lima" not in reply.citations[0].quote


@pytest.mark.skipif(not DEV.exists(), reason="../shared/eval/dev.jsonl is not beside the repository")
def test_the_onnx_backend_answers_the_dev_set_and_is_remembered_by_the_index(tmp_path, monkeypatch):
    monkeypatch.setenv("QA_CACHE", str(tmp_path / "cache"))  # the int8 export is made here, offline
    index_dir = str(tmp_path / "index")
    qa.build_index(SEEDS, index_dir, backend="onnx")
    assert qa.describe_index(index_dir).backend == "onnx"
    report = evaluate(load_questions(DEV), index_dir=index_dir)  # questions are encoded on onnx too, as the index says
    assert report.overall.answerable_hits == report.overall.answerable and report.overall.abstention_hits == report.overall.unanswerable
    assert report.integrity == 1.0
    again = qa.build_index(SEEDS, index_dir, backend="torch")
    assert again.full_rebuild and qa.describe_index(index_dir).backend == "torch"


def test_an_up_to_date_index_gets_back_its_question_encoder_export(tmp_path, monkeypatch):
    from qa.embeddings import has_export

    index_dir = str(tmp_path / "index")
    monkeypatch.setenv("QA_CACHE", str(tmp_path / "first-cache"))
    qa.build_index(SEEDS, index_dir)
    monkeypatch.setenv("QA_CACHE", str(tmp_path / "cleared-cache"))  # as after clearing ~/.cache
    model = qa.describe_index(index_dir).model
    assert not has_export(model)
    again = qa.build_index(SEEDS, index_dir)
    assert not again.full_rebuild and again.chunks_embedded == 0 and again.unchanged == len(list(Path(SEEDS).glob("*.txt")))
    assert has_export(model), "questions are encoded without PyTorch again after `qa index`"


def test_questions_are_encoded_without_pytorch_as_pytorch_encodes_them(seeds_index):
    from qa.embeddings import get_embedder, query_encoder

    questions = ["Who is the Japanese prime minister who attended the Lima meeting?", "Was ist das?", "🙂 " * 300]
    fast = query_encoder(qa.describe_index(seeds_index).model, "torch")
    assert fast is not None, "the build makes the ONNX export that questions are encoded with"
    cosines = (fast.encode(questions) * get_embedder().encode_texts(questions)).sum(axis=1)
    assert cosines.min() >= 0.9999
    alone = [fast.encode([question])[0] for question in questions]
    assert (fast.encode(questions) * alone).sum(axis=1).min() >= 0.9999, "a follow-up's two texts share one batch"
    code = (f"import sys; from qa.cli import main; main(['ask', {questions[0]!r}, '--index', {seeds_index!r}]); "
            "print(sorted({'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)))")
    asked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert "Shigeru Ishiba" in asked.stdout and asked.stdout.strip().endswith("[]"), asked.stdout + asked.stderr
    assert "Loading" not in asked.stderr and "%|" not in asked.stderr, "no progress bars on a plain question"


def test_a_quote_with_its_own_quotation_marks_is_not_wrapped_in_a_second_pair(seeds_index):
    reply = qa.answer("Why did Cho Tae-yul say that the meeting was very important?", index_dir=seeds_index)
    assert reply.text.startswith("“Today’s meeting is very important for three reasons,” said"), reply.text
    assert "““" not in reply.text and "””" not in reply.text


def test_unanswerable_question_abstains_without_citations(seeds_index):
    for question in ("What is the population of Tokyo?", "Who won the 2022 FIFA World Cup?"):
        reply = qa.answer(question, index_dir=seeds_index)
        assert reply.abstained and reply.citations == []
        assert "do not say" in reply.text


def test_page_furniture_is_never_quoted(seeds_index):
    seed = SEEDS / "000_e98aca2129206eb6.txt"
    furniture_starts = seed.read_text(encoding="utf-8").index(FURNITURE_MARK)
    for question in (
        "Why were eight Japanese nationals stranded on Sumatra?",
        "What sanctions did China impose on Shigeru Iwasaki?",
        "Did Japan pull out of the Vietnam nuclear project?",
        "What is the NISA program lineup?",
    ):
        reply = qa.answer(question, index_dir=seeds_index)
        for citation in reply.citations:
            assert not (Path(citation.path) == seed.resolve() and citation.end > furniture_starts), citation.quote


def test_headline_lists_are_stripped_but_story_kept():
    scan = read_articles(SEEDS)
    assert not scan.skipped
    first = next(a for a in scan.articles if a.path.startswith("000_"))
    story = " ".join(first.text[s:e] for s, e in first.paragraphs)
    assert "Sumatra" not in story and "RANKING" not in story and "NISA" not in story
    assert "deepen the Japan-U.S. alliance" in story and "Lima" in story
    assert first.title.startswith("Japan, U.S., ROK") and first.date == "15:06 JST, November 16, 2024"
    assert first.dateline == "LIMA"


@pytest.mark.skipif(not BBC.exists(), reason="../shared/corpora/bbc is not beside the repository")
def test_furniture_rules_keep_every_line_of_real_news_stories():
    scan = read_articles(BBC)
    assert scan.skipped == []
    assert "£" in next(a.text for a in scan.articles if a.path == "sport/199.txt")  # its one Latin-1 byte, read as such
    for article in (a for a in scan.articles if a.path.endswith(".txt")):
        kept = {article.text[s:e].strip() for s, e in article.paragraphs} | {article.title}
        lost = [line for line in article.text.split("\n") if len(line.strip()) > 3 and line.strip() not in kept]
        assert not lost, (article.path, lost[:3])


def test_sentences_keep_abbreviations_and_quotations_whole(seeds_index):
    reply = qa.answer("Why is the military cooperation between North Korea and Russia called particularly egregious?", index_dir=seeds_index)
    quote = next(c.quote for c in reply.citations if "egregious" in c.quote)
    assert "The deepening military cooperation between" in quote and quote.endswith("it said.")
    assert "U.N. Security Council" in quote


def test_many_small_updates_answer_as_a_fresh_build_does(tmp_path, monkeypatch):
    monkeypatch.setattr(qa_index, "MAX_SEGMENTS", 2)
    articles, index_dir = copy_seeds(tmp_path / "articles"), tmp_path / "index"
    qa.build_index(articles, index_dir)
    for number in range(4):
        (articles / f"ferry_{number}.txt").write_text(
            f"Ferry line {number} opens\n\nThe ferry line number {number} opened on Tuesday with {number + 2} boats.\n",
            encoding="utf-8",
        )
        qa.build_index(articles, index_dir)
        (articles / f"ferry_{number}.txt").write_text(
            f"Ferry line {number} delayed\n\nThe ferry line number {number} was delayed until spring.\n", encoding="utf-8"
        )
        qa.build_index(articles, index_dir)
    segments = read_manifest(current_generation(index_dir))["segments"]
    assert len(segments) <= 2, "small segments are merged"
    kept = {entry["name"] for generation in index_dir.glob("gen-*") for entry in read_manifest(generation)["segments"]}
    assert {path.name for path in (index_dir / SEGMENTS_DIR).iterdir()} == kept, "merged-away segments are deleted"

    fresh = tmp_path / "fresh"
    qa.build_index(articles, fresh)
    for question in ["When was ferry line 2 delayed until?", "When will the three countries meet?", "Who is Ishiba?"]:
        incremental, rebuilt = qa.answer(question, index_dir=str(index_dir)), qa.answer(question, index_dir=str(fresh))
        assert incremental.text == rebuilt.text


def test_a_story_filed_twice_answers_from_each_copy_as_from_the_original(tmp_path):
    articles = copy_seeds(tmp_path / "articles")
    original = sorted(articles.glob("*.txt"))[0]
    shutil.copy(original, articles / "filed-again.txt")
    index_dir = str(tmp_path / "index")
    qa.build_index(articles, index_dir)
    question = "Where did the leaders of Japan, the United States and South Korea meet?"
    answers = [
        qa.answer(question, index_dir=index_dir, where={"articles": [path]}) for path in (original.name, "filed-again.txt")
    ]
    assert [c.quote for c in answers[0].citations] == [c.quote for c in answers[1].citations]
    assert [c.score for c in answers[0].citations] == [c.score for c in answers[1].citations]
    assert all(citation_is_intact(c) for reply in answers for c in reply.citations)
    assert Path(answers[1].citations[0].path).name == "filed-again.txt"


def test_an_index_of_another_model_is_rebuilt_with_the_shipped_fine_tuned_one(tmp_path, caplog):
    from qa.config import DEFAULT_MODEL, PACKAGED_MODEL
    from qa.embeddings import CHANGED_WEIGHTS_FILE, SHIPPED_MODELS

    shipped = SHIPPED_MODELS / DEFAULT_MODEL / CHANGED_WEIGHTS_FILE
    assert shipped.stat().st_size < 25 * 1024 * 1024, "the fine-tuned weights that ship stay under git's 25 MB"
    articles, index_dir = copy_seeds(tmp_path / "articles"), tmp_path / "index"
    qa.build_index(articles, index_dir, model=PACKAGED_MODEL)  # as an index built before the fine-tuned model shipped
    assert qa.describe_index(str(index_dir)).model == PACKAGED_MODEL
    report = qa.build_index(articles, index_dir)
    assert report.full_rebuild and report.added == 2 and report.chunks_embedded > 0
    assert "re-embedding everything" in caplog.text
    assert qa.describe_index(str(index_dir)).model == DEFAULT_MODEL
    reply = qa.answer("Where did the leaders of Japan, the United States and South Korea meet in November 2024?", index_dir=str(index_dir))
    assert any("Lima" in c.quote for c in reply.citations)


def test_unusable_files_are_skipped_and_the_build_goes_on(tmp_path, caplog):
    articles = copy_seeds(tmp_path / "articles")
    (articles / "empty.txt").write_text("", encoding="utf-8")
    (articles / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (articles / "notes.pdf").write_bytes(b"%PDF-1.4")
    report = qa.build_index(articles, tmp_path / "index")
    assert report.added == 2
    assert sorted(s.path for s in report.skipped) == ["binary.txt", "empty.txt"]
    assert all(s.reason for s in report.skipped)
    assert "skipped binary.txt: not a text file" in caplog.text


@pytest.mark.parametrize(
    "question, message",
    [("", "empty"), ("   \n\t ", "empty"), ("x" * 5000, "characters long"), ("What\x00 happened?", "control"), ("Why\x1b[31m?", "control")],
)
def test_bad_questions_are_rejected_with_a_clear_message(seeds_index, question, message):
    with pytest.raises(ValueError, match=message):
        qa.answer(question, index_dir=seeds_index)


def test_odd_unicode_is_answered_without_crashing(seeds_index):
    for question in ("東京の人口は？ 🤔", "Что сказал Байден?", "‮ Ishiba ‭", "' OR 1=1; DROP TABLE articles; --", "<script>alert(1)</script>"):
        reply = qa.answer(question, index_dir=seeds_index)
        assert reply.abstained or all(citation_is_intact(c) for c in reply.citations)


def test_answer_notices_a_rebuilt_index(tmp_path):
    articles, index_dir = copy_seeds(tmp_path / "articles"), str(tmp_path / "index")
    qa.build_index(articles, index_dir)
    question = "What colour is the new lighthouse in Port Mirelle?"
    assert qa.answer(question, index_dir=index_dir).abstained
    (articles / "lighthouse.txt").write_text(
        "Lighthouse repainted\n\nThe new lighthouse in Port Mirelle was painted bright red and white this spring.\n",
        encoding="utf-8",
    )
    qa.build_index(articles, index_dir)
    assert "bright red" in qa.answer(question, index_dir=index_dir).text


def test_missing_index_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="qa index"):
        qa.answer("Where did they meet?", index_dir=str(tmp_path / "nothing"))


def test_cli_index_ask_and_eval(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", QA_INDEX=str(tmp_path / "index"), QA_ARTICLES=str(SEEDS))
    run = lambda *args: subprocess.run([sys.executable, "-m", "qa.cli", *args], capture_output=True, text=True, env=env)  # noqa: E731
    built = run("index")
    assert built.returncode == 0 and "2 added" in built.stdout
    assert "embedding chunks: 100%" in built.stderr, "a build into a log still shows its progress"
    asked = run("ask", "Who is the Japanese prime minister who attended the Lima meeting?")
    assert asked.returncode == 0 and "Shigeru Ishiba" in asked.stdout and "000_e98aca2129206eb6.txt:" in asked.stdout
    bad = run("ask", " ")
    assert bad.returncode == 2 and "question is empty" in bad.stderr
    if DEV.exists():
        scored = run("eval", str(DEV))
        assert "answerable hits      9/9" in scored.stdout and "citation integrity" in scored.stdout
    for command in ("index", "ask", "eval", "serve"):
        assert run(command, "--help").returncode == 0


def test_is_hit_normalises_quotes_case_and_spaces():
    question = load_questions_from([{"question": "q", "gold": [["Levi's  Stadium"]], "answerable": True}])[0]
    reply = qa.Answer("q", "", [qa.Citation("played at LEVI’S\nstadium.", "x", "t", None, 0, 1, 1.0)])
    assert is_hit(question, reply)


def load_questions_from(records: list[dict]):
    from qa.evaluate import Question

    return [Question(str(i), r["question"], r["gold"], r["answerable"]) for i, r in enumerate(records)]
