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
