"""Follow-up questions: the pure rules of qa.followup, and dev-style conversations answered over the seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa.followup import CONTEXT_PREFIX, MAX_CONTEXT_WORDS, is_followup, names, resolve_question

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
LIMA_QUESTION = "Where did the leaders of Japan, the United States and South Korea meet in November 2024?"
LIMA_ANSWER = "“The leaders of Japan, the United States and South Korea hold talks in Lima on Friday.” [1]"


@pytest.mark.parametrize(
    "question",
    [
        "Who attended it?",
        "And who attended it?",
        "What did he say about Russia?",
        "What did they condemn?",
        "Why?",
        "What about Biden?",
        "Who was there?",
        "What happened after that?",
        "When was that meeting?",
        "What did Ishiba say about it?",
        "What is his name?",
    ],
)
def test_referring_or_short_questions_are_follow_ups(question: str) -> None:
    assert is_followup(question)


@pytest.mark.parametrize(
    "question",
    [
        "What is the population of Tokyo?",
        "Who won the 2022 FIFA World Cup?",
        "When was the Camp David summit held?",
        "Is there a trilateral secretariat in Seoul?",
        "Who said that Japan wants to work closely with South Korea?",
        "What did Yoon say about his country's security?",
        "How did the leaders at the Lima summit describe their talks?",
    ],
)
def test_self_contained_questions_pass_through_unchanged(question: str) -> None:
    assert not is_followup(question)
    assert resolve_question(question, [(LIMA_QUESTION, LIMA_ANSWER)]) == question


def test_without_history_the_question_is_unchanged() -> None:
    assert resolve_question("Who attended it?", []) == "Who attended it?"
    assert resolve_question("Who attended it?", None) == "Who attended it?"


def test_follow_up_gets_the_previous_questions_key_terms() -> None:
    resolved = resolve_question("Who attended it?", [(LIMA_QUESTION, LIMA_ANSWER)])
    question, _, context = resolved.partition(f" {CONTEXT_PREFIX} ")
    assert question == "Who attended it?"
    assert {"leaders", "Japan", "Korea"} <= set(context.split())
    assert "did" not in context.split() and "the" not in context.split()
    assert len(context.split()) <= MAX_CONTEXT_WORDS


def test_person_pronoun_takes_names_from_the_previous_answer_first() -> None:
    history = [
        (
            "Who is South Korea's foreign minister?",
            "““Today’s meeting is very important,” said South Korean Foreign Minister Cho Tae-yul, who joined Blinken.” [1]",
        )
    ]
    resolved = resolve_question("What did he say about North Korea?", history)
    context = resolved.split(f" {CONTEXT_PREFIX} ", 1)[1]
    assert context.startswith("South Korean Foreign Minister Cho Tae-yul")
    assert "Today’s" not in context


def test_chained_follow_ups_keep_the_original_topic() -> None:
    history = [(LIMA_QUESTION, LIMA_ANSWER), ("Who attended it?", "“Prime Minister Shigeru Ishiba met Biden.” [1]")]
    resolved = resolve_question("What did they condemn?", history)
    assert "Japan" in resolved and "leaders" in resolved


def test_context_adds_no_word_the_question_already_has() -> None:
    resolved = resolve_question("What about Japan?", [(LIMA_QUESTION, LIMA_ANSWER)])
    assert resolved.split().count("Japan?") == 1 and "Japan" not in resolved.split(CONTEXT_PREFIX)[1].split()


def test_names_keep_abbreviations_and_skip_sentence_openers() -> None:
    text = "“Today’s talks matter,” said U.S. President Joe Biden. The leaders met in Lima [2]."
    assert names(text) == ["U.S. President Joe Biden", "Lima"]


def test_odd_input_does_not_break_resolution() -> None:
    history = [("", ""), ("¿Qué?", "—")]
    assert resolve_question("   ", history) == "   "
    assert resolve_question("Et ça ?", history).startswith("Et ça ?")


@pytest.fixture(scope="module")
def seed_index(tmp_path_factory: pytest.TempPathFactory) -> str:
    from qa import build_index

    index_dir = tmp_path_factory.mktemp("followup-index")
    build_index(str(SEEDS), str(index_dir))
    return str(index_dir)


CONVERSATIONS = [
    pytest.param([LIMA_QUESTION, "Who attended it?"], "Shigeru Ishiba", id="who-attended-it"),
    pytest.param([LIMA_QUESTION, "And who attended it?"], "Joe Biden", id="and-who-attended-it"),
    pytest.param(
        [LIMA_QUESTION, "Who attended it?", "What did they condemn?"], "strongly condemned", id="chained-follow-up"
    ),
    pytest.param(
        ["Who is the Japanese prime minister who attended the Lima meeting?", "Whom did he meet separately?"],
        "met separately with Biden",
        id="he-met",
    ),
    pytest.param(
        ["When was the Camp David summit held?", "Which areas of collaboration did it list?"],
        "missile defense",
        id="it-listed",
    ),
    pytest.param(
        ["Who is the Japanese prime minister who attended the Lima meeting?", "What did he thank Biden for?"],
        "deepen the Japan-U.S. alliance",
        id="he-thanked",
    ),
    pytest.param(
        ["Where was the Camp David summit held?", "Who attended it?"], "Fumio Kishida", id="camp-david-attendees"
    ),
]


@pytest.mark.parametrize(("questions", "expected"), CONVERSATIONS)
def test_follow_up_conversations_cite_the_right_quote(seed_index: str, questions: list[str], expected: str) -> None:
    from qa import answer

    history: list[tuple[str, str]] = []
    for question in questions:
        result = answer(question, index_dir=seed_index, history=history)
        history.append((question, result.text))
    assert not result.abstained
    quotes = [citation.quote for citation in result.citations]
    assert any(expected.lower() in quote.lower() for quote in quotes), quotes


def test_unrelated_question_after_a_conversation_still_abstains(seed_index: str) -> None:
    from qa import answer

    first = answer(LIMA_QUESTION, index_dir=seed_index)
    result = answer("What is the population of Tokyo?", index_dir=seed_index, history=[(LIMA_QUESTION, first.text)])
    assert result.abstained and not result.citations


@pytest.mark.parametrize("history", [["just text"], [("question", "answer", "extra")], [(None, "answer")]])
def test_malformed_history_is_refused_with_a_message(seed_index: str, history: list) -> None:
    from qa import answer

    with pytest.raises(ValueError, match="history turn must be a .question, answer. pair"):
        answer("Why?", index_dir=seed_index, history=history)
