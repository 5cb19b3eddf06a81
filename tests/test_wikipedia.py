"""The real Wikipedia sample: wiki-18 passages from gensim's dump, and questions checked against it."""

import json

import pytest

from dgpo_agent import wikipedia
from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import split_contents, substring_hit
from dgpo_agent.store.corpus import read_corpus

pytest.importorskip("gensim")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return wikipedia.build(tmp_path_factory.mktemp("wiki"))


def test_the_corpus_is_wiki18_passages_of_real_articles(sample):
    records = list(read_corpus(sample.corpus))
    assert len({r["id"] for r in records}) == len(records) > 1000
    assert all(0 < len(r["text"].split()) <= 100 for r in records)
    titles = {r["title"] for r in records}
    assert {"Algeria", "Apollo 11", "Aristotle", "Animal Farm"} <= titles
    assert not any("'''" in r["text"] or "[[" in r["text"] for r in records)  # no wiki markup left


def test_every_question_is_answered_by_its_evidence_passage(sample):
    corpus = {r["id"]: r for r in read_corpus(sample.corpus)}
    splits = {split: [json.loads(line) for line in sample.questions(split).read_text().splitlines()] for split in wikipedia.SPLITS}
    assert len(splits["test"]) >= 40 and len(splits["dev"]) >= 10
    asked = [q["question"] for split in splits.values() for q in split]
    assert len(set(asked)) == len(asked)  # no question twice, within or across splits
    for q in (q for split in splits.values() for q in split):
        (evidence,) = q["evidence"]
        assert corpus[evidence]["title"] == q["article"]
        assert substring_hit(corpus[evidence]["text"], q["golden_answers"]), q["id"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"article": "Algeria", "golden_answers": ["Ouagadougou"]}, "no passage of 'Algeria' contains"),
        ({"article": "Atlantis", "golden_answers": ["Algiers"]}, "names the article 'Atlantis'"),
    ],
)
def test_a_question_its_article_does_not_answer_is_refused_before_anything_is_written(tmp_path, row, message):
    questions = tmp_path / "questions"
    questions.mkdir()
    (questions / "dev.jsonl").write_text((wikipedia.QUESTIONS / "dev.jsonl").read_text())
    (questions / "test.jsonl").write_text(json.dumps({"id": "q1", "question": "What is the capital of Algeria?", **row}) + "\n")
    with pytest.raises(DGPOError, match=message):
        wikipedia.build(tmp_path / "out", questions=questions)
    assert not (tmp_path / "out").exists()


def test_passages_keep_the_title_on_the_first_line():
    (first, second) = wikipedia.passages("7", "Aa River", " ".join(["w"] * 150))
    assert first["id"] == "7-0" and split_contents(first["contents"]) == ("Aa River", " ".join(["w"] * 100))
    assert len(second["contents"].split()) == 52  # the quoted title, then the last 50 words


def test_generated_training_questions_are_answered_by_their_passage_and_leave_dev_and_test_alone(sample):
    """Training questions come from the articles (a definition's subject, a sentence's year), each
    answered by its evidence passage, and none uses a passage or an (article, answer) that a
    hand-written dev or test question uses."""
    from dgpo_agent.protocol import normalize_answer

    corpus = {r["id"]: r for r in read_corpus(sample.corpus)}
    train = [json.loads(line) for line in sample.questions("train").read_text().splitlines()]
    held_out = [json.loads(line) for split in wikipedia.SPLITS for line in sample.questions(split).read_text().splitlines()]
    assert len(train) >= 60 and len({q["id"] for q in train}) == len(train)
    assert {q["question"].split()[0] for q in train} >= {"What", "Who"} and any(q["question"].endswith("what year?") for q in train)
    for q in train:
        (evidence,) = q["evidence"]
        assert corpus[evidence]["title"] == q["article"] and q["question"].endswith("?")
        assert substring_hit(corpus[evidence]["text"], q["golden_answers"]), q["id"]
    used = {p for q in held_out for p in q["evidence"]}
    facts = {(q["article"], normalize_answer(a)) for q in held_out for a in q["golden_answers"]}
    assert not any(q["evidence"][0] in used or (q["article"], normalize_answer(q["golden_answers"][0])) in facts for q in train)


def test_a_definition_question_names_a_person_with_who():
    lead = {"id": "1-0", "contents": '"Ada Lovelace"\nAda Lovelace (10 December 1815 – 27 November 1852) was an English mathematician and writer. She worked on the engine.'}
    question, answer, passage = wikipedia._definition("Ada Lovelace", lead)
    assert question == "Who was an English mathematician and writer?" and answer == "Ada Lovelace" and passage is lead
    thing = {"id": "2-0", "contents": '"Adobe"\nAdobe is a building material made from earth and organic material. More.'}
    assert wikipedia._definition("Adobe", thing)[0] == "What is a building material made from earth and organic material?"
    assert wikipedia._definition("Adobe", {"id": "3-0", "contents": '"Adobe"\nMud bricks.'}) is None


def test_the_first_articles_only_keep_their_questions(tmp_path):
    small = wikipedia.build(tmp_path / "small", articles=5)
    titles = {r["title"] for r in read_corpus(small.corpus)}
    assert len(titles) == 5
    for split in ("train", *wikipedia.SPLITS):
        rows = [json.loads(line) for line in small.questions(split).read_text().splitlines()]
        assert all(r["article"] in titles for r in rows)
    assert sum(1 for _ in small.questions("test").open()) > 0
