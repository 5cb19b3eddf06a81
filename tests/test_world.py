"""The embedded world: determinism, answerable and entity-disjoint questions, distractors, and the
scripted oracle reading real documents."""

import hashlib
import json
import random
import re

import pytest

from dgpo_agent import protocol
from dgpo_agent.backends.base import Context, SamplingParams
from dgpo_agent.world import DATA_SOURCES, NameGenerator, OraclePolicy, WorldConfig, generate_world, load_questions
from dgpo_agent.world.corpus import read_facts
from dgpo_agent.world.oracle import COMPARISON_STYLES

SPLITS = ("train", "dev", "test")
HOPS = {"world_single": 1, "world_bridge": 2, "world_compare": 2, "world_3hop": 3}
FILES = ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "kb.json")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def small(small_world):
    return small_world


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    generate_world(out, WorldConfig.preset("default", seed=0))
    return out


def questions(world, *splits):
    return [q for split in splits or SPLITS for q in load_questions(world / f"{split}.jsonl")]


# ------------------------------------------------------------------------------------------ world


def test_same_seed_gives_byte_identical_files_and_recorded_hashes(small, tmp_path):
    summary = generate_world(tmp_path, WorldConfig.preset("small", seed=0))
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (small / name).read_bytes(), name
    assert (tmp_path / "world.json").read_bytes() == (small / "world.json").read_bytes()
    assert summary["sha256"] == {n: hashlib.sha256((small / n).read_bytes()).hexdigest() for n in FILES}


def test_another_seed_gives_another_world(small, tmp_path):
    summary = generate_world(tmp_path, WorldConfig.preset("small", seed=1))
    for name in FILES:
        assert (tmp_path / name).read_bytes() != (small / name).read_bytes(), name
    assert summary["seed"] == 1


def test_unknown_preset_is_a_user_error():
    from dgpo_agent.errors import DGPOError

    with pytest.raises(DGPOError, match="small"):
        WorldConfig.preset("huge")


def test_every_fact_is_stated_by_a_clean_passage(small):
    corpus = {r["id"]: r for r in read_jsonl(small / "corpus.jsonl")}
    kb = json.loads((small / "kb.json").read_text())
    assert all(re.fullmatch(r"p\d{6}", pid) for pid in corpus)
    assert not any(c in r["title"] + r["text"] for r in corpus.values() for c in "<>")
    for fact in kb["facts"]:
        assert fact["passages"], fact
        for pid in fact["passages"]:
            assert corpus[pid]["title"] == fact["subject"]
            assert fact["object"] in corpus[pid]["text"]


def test_golden_answers_appear_in_the_evidence(default):
    corpus = {r["id"]: r for r in read_jsonl(default / "corpus.jsonl")}
    for q in questions(default):
        assert len(q["golden_answers"]) == 1 and q["evidence"], q
        evidence = " ".join(corpus[pid]["text"] for pid in q["evidence"])
        assert q["golden_answers"][0] in evidence, q
        assert all(name in q["question"] for name in q["entities"])
        assert q["hops"] == HOPS[q["data_source"]]


def test_comparisons_are_between_different_years(default):
    kb = json.loads((default / "kb.json").read_text())
    year = {f["subject"]: f["object"] for f in kb["facts"] if f["relation"].endswith("year")}
    compares = [q for q in questions(default) if q["data_source"] == "world_compare"]
    assert compares and all(year[a] != year[b] for a, b in (q["entities"] for q in compares))


def test_entity_names_are_unique(default):
    kb = json.loads((default / "kb.json").read_text())
    names = [e["name"].casefold() for e in kb["entities"]]
    assert len(names) == len(set(names))


def test_test_questions_name_no_entity_of_any_training_question(default):
    train, test = questions(default, "train"), questions(default, "test")

    def named_in(names, texts):
        blob = "\n".join(q["question"] for q in texts)
        return [n for n in {n for q in names for n in q["entities"]} if re.search(rf"\b{re.escape(n)}\b", blob)]

    assert named_in(test, train) == []
    assert named_in(train, test) == []
    assert named_in(questions(default, "dev"), train) == []


def test_default_test_split_is_large_and_spread_over_every_source(default):
    test = questions(default, "test")
    summary = json.loads((default / "world.json").read_text())
    assert len(test) >= 256
    sources = {q["data_source"] for q in test}
    assert sources == set(DATA_SOURCES)
    assert summary["counts"]["questions"]["test"]["all"] == len(test)
    assert 5000 <= summary["counts"]["passages"] <= 8000
    assert len(questions(default, "train")) >= 5000


def test_distractors_have_near_names_and_passages(default):
    kb = json.loads((default / "kb.json").read_text())
    titles = {r["title"] for r in read_jsonl(default / "corpus.jsonl")}
    kinds = {e["name"]: e["kind"] for e in kb["entities"]}
    assert len(kb["near"]) >= 0.1 * len(kinds)
    assert {kinds[a] for a, _ in kb["near"]} >= {"person", "organisation", "work", "city"}
    for a, b in kb["near"]:
        assert a != b and kinds[a] == kinds[b] and a in titles and b in titles
        assert a.split()[0] == b.split()[0] or len(a) == len(b)


def test_name_generator_never_repeats_and_avoids_reserved_words():
    world = NameGenerator(0)
    made = [world.name(kind) for kind in ("person", "city", "organisation", "work") for _ in range(300)]
    assert len({n.casefold() for n in made}) == len(made)
    fresh = NameGenerator(0, reserved=made)
    words = {w.casefold() for n in made for w in n.split()}
    for _ in range(200):
        name = fresh.person()
        assert name not in made and not {w.casefold() for w in name.split()} & words


# ------------------------------------------------------------------------------------------ oracle


def run(policy, question, retrieve, turns=5):
    """The agent loop in miniature: generate, parse, search, repeat; returns (answer, actions)."""
    ctx = Context(question=question, segments=[policy.prompt(question)])
    actions = []
    for _ in range(turns):
        text = policy.generate([ctx], SamplingParams())[0].text
        action = protocol.parse_action(text)
        assert action.kind != "invalid" and action.thinks, text
        actions.append(action)
        ctx.segments.append({"role": "model", "text": text, "ids": None})
        if action.kind == "answer":
            return action.content, actions
        ctx.segments.append({"role": "env", "text": protocol.information(retrieve(action.content)), "ids": None})
    return None, actions


class PerfectRetriever:
    """Whatever the query: the gold evidence plus two passages about near-named entities, shuffled."""

    def __init__(self, world, seed=0):
        self.corpus = read_jsonl(world / "corpus.jsonl")
        self.by_id = {r["id"]: r for r in self.corpus}
        near = json.loads((world / "kb.json").read_text())["near"]
        self.near = {a: b for pair in near for a, b in (pair, pair[::-1])}
        self.rng = random.Random(seed)

    def for_question(self, question):
        gold = [self.by_id[pid] for pid in question["evidence"]]
        twins = {self.near[d["title"]] for d in gold if d["title"] in self.near}
        others = [r for r in self.corpus if r["title"] in twins] or [r for r in self.corpus if r not in gold]
        docs = [{**d, "score": 1.0} for d in gold + self.rng.sample(others, min(2, len(others)))]
        self.rng.shuffle(docs)
        return lambda query: docs


def test_oracle_solves_every_small_world_question_with_a_perfect_retriever(small):
    policy, retriever = OraclePolicy(), PerfectRetriever(small)
    for q in questions(small):
        answer, actions = run(policy, q["question"], retriever.for_question(q))
        assert protocol.exact_match(answer, q["golden_answers"]) == 1.0, (q, answer)
        assert len(actions) == 2 and actions[0].kind == "search"


def test_oracle_reads_only_the_exact_title_and_follows_the_chain():
    def doc(title, text):
        return {"id": title, "title": title, "text": text, "score": 1.0}

    docs = {  # a near-named distractor, and a document whose title is not the subject it claims about
        "Kreaxse Labs founder": [
            doc("Kreaxse Systems", "Kreaxse Systems was founded by Vorla Dena."),
            doc("Kreaxse Labs", "The founder of Kreaxse Labs is Zentrath Doglassoun."),
            doc("Kreaxse Systems", "Kreaxse Labs was founded by Vorla Dena."),
        ],
        "Zentrath Doglassoun birthplace": [
            doc("Zentrath Doglassun", "Zentrath Doglassun was born in the city of Brija."),
            doc("Zentrath Doglassoun", "Zentrath Doglassoun is a native of the city of Osta."),
        ],
    }
    answer, actions = run(OraclePolicy(), "Where was the founder of Kreaxse Labs born?", lambda q: docs.get(q, []))
    assert [a.content for a in actions] == ["Kreaxse Labs founder", "Zentrath Doglassoun birthplace", "Osta"]


def test_oracle_retries_once_with_other_words_then_answers_unknown():
    answer, actions = run(OraclePolicy(), "when was zentrath doglassoun born", lambda query: [])
    queries = [a.content for a in actions if a.kind == "search"]
    assert len(queries) == 2 and len(set(queries)) == 2 and all("zentrath doglassoun" in q for q in queries)
    assert answer == "unknown"


def test_oracle_answers_at_once_when_the_context_already_holds_the_evidence(small):
    corpus = {r["id"]: r for r in read_jsonl(small / "corpus.jsonl")}
    policy = OraclePolicy()
    for q in questions(small, "test"):
        docs = [{**corpus[pid], "score": 1.0} for pid in q["evidence"]]
        given = {"role": "env", "text": protocol.information(docs), "ids": None}
        ctx = Context(q["question"], [policy.prompt(q["question"]), given])
        action = protocol.parse_action(policy.generate([ctx], SamplingParams())[0].text)
        assert action.kind == "answer" and protocol.exact_match(action.content, q["golden_answers"]), q


def test_oracle_answers_unknown_to_a_question_outside_the_grammar():
    answer, actions = run(OraclePolicy(), "What is the meaning of life?", lambda query: pytest.fail("searched"))
    assert answer == "unknown" and len(actions) == 1


def test_oracle_is_deterministic_and_text_only(small):
    policy = OraclePolicy()
    q = questions(small, "test")[0]
    ctx = Context(q["question"], [policy.prompt(q["question"])])
    first, second = (policy.generate([ctx, ctx], SamplingParams()) for _ in range(2))
    assert [c.text for c in first] == [c.text for c in second] and first[0].text == first[1].text
    assert policy.encode("anything") is None
    assert policy.prompt(q["question"])["text"] == protocol.render_prompt(q["question"])


def test_oracle_can_show_the_step_that_decides_a_comparison_in_each_style(small):
    corpus = {r["id"]: r for r in read_jsonl(small / "corpus.jsonl")}
    compares = [q for q in questions(small, "test") if q["data_source"] == "world_compare"]
    assert compares
    step = r"The (earlier|later) of (\d{4})( \(.+?\))? and (\d{4})( \(.+?\))? is (?:(\d{4})( \(.+?\))?)?(?:,? ?the (first|second))?(?:, ([^.]+))?\."
    for q in compares:
        docs = [{**corpus[pid], "score": 1.0} for pid in q["evidence"]]
        years = [year for doc in docs for (_, relation), year in read_facts(doc["text"]).items() if relation.endswith("_year")]
        for style in COMPARISON_STYLES:
            policy = OraclePolicy(comparison=style)
            ctx = Context(q["question"], [policy.prompt(q["question"]), {"role": "env", "text": protocol.information(docs), "ids": None}])
            text = policy.generate([ctx], SamplingParams())[0].text
            action = protocol.parse_action(text)
            assert action.kind == "answer" and protocol.exact_match(action.content, q["golden_answers"]), q
            stated = re.search(step, text)
            assert (stated is not None) == (style is not None), text
            if style is None:
                continue
            word, first, first_name, second, second_name, chosen, chosen_name, which, keyed_name = stated.groups()
            picked = chosen or (first, second)[("first", "second").index(which)]
            assert sorted([first, second]) == sorted(years)
            assert picked == (min if word == "earlier" else max)(years, key=int)
            assert text.startswith(f"<think> I want the {word} year.") == (style not in ("stated", None)), text
            assert (chosen is None) == (style == "placed") and (chosen_name is not None) == (style == "framed")
            assert (which is not None) == (style in ("ordered", "placed")), text
            if style == "framed":
                assert chosen_name == f" ({action.content})" and chosen_name in (first_name, second_name)
            if which:  # the fact it points to is the answer's: its entity and the chosen year
                facts = re.findall(r"\. ([^.]+?) (?:was born|was founded|came out) in (\d{4})(?=\.)", text)
                assert facts[("first", "second").index(which)] == (action.content, picked), (facts, text)
            assert (keyed_name is not None) == (style == "keyed"), text
            if keyed_name:  # each year said first, and the step's name is the one that followed the chosen year
                facts = re.findall(r"In (\d{4}), ([^.]+?) (?:was born|was founded|came out)\.", text)
                assert sorted(year for year, _ in facts) == sorted(years) and (picked, keyed_name) in facts, (facts, text)
                assert keyed_name == action.content


def test_the_oracles_first_thought_on_a_framed_comparison_says_which_year_it_wants():
    question = "Who is younger, Zentrath Doglassoun or Vorla Dena?"
    text = OraclePolicy(comparison="framed").turn(Context(question, [OraclePolicy().prompt(question)]))
    assert text.startswith("<think> I want the later year. I need to find when Zentrath Doglassoun was born.")
    assert OraclePolicy().turn(Context(question, [OraclePolicy().prompt(question)])).startswith("<think> I need to find when")
    with pytest.raises(ValueError, match="comparison must be one of"):
        OraclePolicy(comparison="boxed")
