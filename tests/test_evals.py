"""ARC metrics, evaluators, probes and data loading, on hand-made trajectories with known answers."""

import json
import re
from pathlib import Path

import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.evals.data import load_dataset
from dgpo_agent.evals.evaluators import all_evaluators, evaluator
from dgpo_agent.evals.metrics import METRICS
from dgpo_agent.evals.probes import parse_turn
from dgpo_agent.evals.scoring import aggregate, score

FOUNDER = {"id": "p1", "title": "Kreaxse Labs", "text": "Kreaxse Labs was founded by Zentrath Doglassoun.", "score": 0.9}
BIRTH = {"id": "p2", "title": "Zentrath Doglassoun", "text": "Zentrath Doglassoun was born in Vellor.", "score": 0.8}
NOISE = {"id": "p3", "title": "Evil", "text": "Nothing useful here.", "score": 0.1}
TITLE_ONLY = {"id": "p4", "title": "Vellor", "text": "A quiet city by the sea.", "score": 0.5}

RECORD = {"golden_answers": ["zentrath doglassoun"], "evidence": ["p1", "p9"]}

# Four turns: think + search; an empty query; the same query again (after normalisation); think + answer.
TRAJECTORY = {
    "answer": "Zentrath Doglassoun",
    "steps": [
        {"kind": "think", "turn": 1, "text": "I need the founder."},
        {"kind": "search", "turn": 1, "query": "Kreaxse Labs founder", "docs": [FOUNDER, NOISE]},
        {"kind": "invalid", "turn": 2, "text": "<search>  </search>", "reason": "empty_query"},
        {"kind": "search", "turn": 3, "query": "kreaxse labs founder!", "docs": [BIRTH]},
        {"kind": "think", "turn": 4, "text": "So it is Zentrath Doglassoun ok"},
        {"kind": "answer", "turn": 4, "answer": "Zentrath Doglassoun"},
    ],
}


def test_every_metric_on_a_four_turn_trajectory():
    assert score(TRAJECTORY, RECORD) == {
        "em": 1.0,
        "f1": 1.0,
        "answered": 1.0,
        "hit": 1.0,
        "evidence_recall": 0.5,  # p1 retrieved, p9 not
        "searches": 2.0,
        "empty_query": pytest.approx(1 / 3),  # one of three search attempts was empty
        "duplicate_query": 0.5,  # the second search repeats the first
        "think_rate": 0.5,  # turns 1 and 4 of 4
        "think_words": 5.0,  # 4 and 6 words
        "invalid": 0.25, "overflow": 0.0,
        "turns": 4.0,
        "answered_without_search": 0.0,
        "grounded": 1.0,
    }


def test_a_guess_without_search():
    guess = {"answer": "Paris", "steps": [{"kind": "answer", "turn": 1, "answer": "Paris"}]}
    scores = score(guess, {"golden_answers": ["Vellor"]})
    assert scores == {
        "em": 0.0, "f1": 0.0, "answered": 1.0, "hit": 0.0, "searches": 0.0, "think_rate": 0.0,
        "invalid": 0.0, "overflow": 0.0, "turns": 1.0, "answered_without_search": 1.0, "grounded": 0.0,
    }
    # Undefined, so left out rather than scored 0: recall without evidence, rates without searches or thoughts.
    assert not {"evidence_recall", "empty_query", "duplicate_query", "think_words"} & scores.keys()


def test_no_answer_after_invalid_turns():
    stuck = {"answer": None, "steps": [
        {"kind": "invalid", "turn": 1, "text": "hmm", "reason": "no_action"},
        {"kind": "search", "turn": 2, "query": "Vellor", "docs": [TITLE_ONLY]},
        {"kind": "invalid", "turn": 3, "text": "<search> x </search>", "reason": "turn_limit"},
    ]}
    scores = score(stuck, {"golden_answers": ["Vellor"]})
    assert scores["answered"] == 0.0 and scores["em"] == 0.0 and scores["f1"] == 0.0
    assert scores["invalid"] == pytest.approx(2 / 3) and scores["turns"] == 3.0
    assert scores["hit"] == 1.0  # the gold answer is the retrieved document's title
    assert scores["empty_query"] == 0.0 and "grounded" not in scores


def test_hit_and_grounded_differ_when_the_answer_is_wrong():
    wrong = {"answer": "Vellor", "steps": [
        {"kind": "search", "turn": 1, "query": "Kreaxse founder", "docs": [FOUNDER]},
        {"kind": "answer", "turn": 2, "answer": "Vellor"},
    ]}
    scores = score(wrong, RECORD)
    assert (scores["hit"], scores["grounded"], scores["em"]) == (1.0, 0.0, 0.0)
    partial = {**wrong, "answer": "Zentrath"}
    assert score(partial, RECORD)["f1"] == pytest.approx(2 / 3)
    assert score(partial, RECORD)["grounded"] == 1.0


def test_probe_metrics():
    probes = {
        "no_think": {"answer": "Vellor", "prefilled": True},
        "think": {"answer": "Zentrath Doglassoun", "prefilled": False},
    }
    scores = score({**TRAJECTORY, "probes": probes}, RECORD)
    assert (scores["em_no_think"], scores["em_think"], scores["think_gain"]) == (0.0, 1.0, 1.0)
    assert scores["probe_prefilled"] == 0.5
    lost = {"no_think": {"answer": "Zentrath Doglassoun"}, "think": {"answer": None}}
    assert score({**TRAJECTORY, "probes": lost}, RECORD)["think_gain"] == -1.0


@pytest.mark.parametrize(
    "prefill, completion, answer, thinks, prefilled",
    [
        ("<answer>", " Vellor </answer>", "Vellor", [], True),
        ("<think>", " born there </think>\n<answer> Vellor </answer>", "Vellor", ["born there"], True),
        ("<answer>", "<think> own turn </think>\n<answer> Vellor </answer>", "Vellor", ["own turn"], False),
        ("<answer>", " Vellor and more", None, [], True),  # never closed: no answer
        ("<think>", " let me search </think><search> Vellor </search>", None, ["let me search"], True),
    ],
)
def test_a_probe_turn_is_parsed_with_its_prefill(prefill, completion, answer, thinks, prefilled):
    turn = parse_turn(prefill, completion)
    assert (turn["answer"], turn["thinks"], turn["prefilled"]) == (answer, thinks, prefilled)


def test_aggregate_per_source_and_overall():
    rows = [
        ("nq", {"em": 1.0, "evidence_recall": 0.5}),
        ("nq", {"em": 0.0}),
        ("musique", {"em": 1.0, "evidence_recall": 1.0}),
    ]
    assert aggregate(rows) == {
        "all": {"n": 3, "em": 0.6667, "evidence_recall": 0.75},
        "musique": {"n": 1, "em": 1.0, "evidence_recall": 1.0},
        "nq": {"n": 2, "em": 0.5, "evidence_recall": 0.5},
    }


# ----------------------------------------------------------------------------------------- evaluators


def test_every_metric_is_an_evaluator_with_its_own_key():
    reference = {"golden_answers": RECORD["golden_answers"], "evidence": RECORD["evidence"]}
    expected = score(TRAJECTORY, RECORD)
    results = {r["key"]: r["score"] for r in (e(inputs={}, outputs=TRAJECTORY, reference_outputs=reference)
                                              for e in all_evaluators())}
    assert set(results) == set(METRICS)
    assert {k: v for k, v in results.items() if v is not None} == expected
    assert results["em_think"] is None  # no probes in this output
    assert [e.__name__ for e in all_evaluators("thinking")] == ["em_think", "think_gain", "think_rate", "think_words"]


def test_evaluators_accept_openevals_style_references():
    em = evaluator("em")
    assert em(outputs={"answer": "The Vellor"}, reference_outputs={"answer": "vellor"}) == {"key": "em", "score": 1.0}
    assert em(outputs={"answer": "Paris"}, reference_outputs={"answers": ["Vellor", "Paris"]})["score"] == 1.0
    with pytest.raises(DGPOError, match="no gold answer"):
        em(outputs={"answer": "x"}, reference_outputs={})
    with pytest.raises(DGPOError, match="unknown metric 'emm'"):
        evaluator("emm")


def test_langsmith_wraps_the_evaluators_offline():
    from langsmith.evaluation.evaluator import run_evaluator
    from langsmith.schemas import Example, Run

    run = Run(id="00000000-0000-0000-0000-000000000001", name="agent", run_type="chain", inputs={"question": "q"},
              outputs=TRAJECTORY, start_time="2025-01-01T00:00:00", trace_id="00000000-0000-0000-0000-000000000001")
    example = Example(id="00000000-0000-0000-0000-000000000002", inputs={"question": "q"},
                      outputs={"golden_answers": ["Zentrath Doglassoun"], "evidence": ["p1", "p2"]},
                      dataset_id="00000000-0000-0000-0000-000000000003")
    result = run_evaluator(evaluator("evidence_recall")).evaluate_run(run, example)
    assert (result.key, result.score) == ("evidence_recall", 1.0)


# ----------------------------------------------------------------------------------------- data


FIXTURES = Path(__file__).parent / "fixtures"


def test_searchr1_parquet_and_jsonl_give_the_same_records():
    parquet = load_dataset(FIXTURES / "searchr1_mini.parquet")
    assert parquet == load_dataset(FIXTURES / "searchr1_mini.jsonl")
    assert len(parquet) == 12
    assert sorted({r["data_source"] for r in parquet}) == ["hotpotqa", "musique", "nq"]
    assert parquet[0] == {"id": "test_0", "question": "When was the artist of Hathbre Kraxtren Zoutuk born?",
                          "golden_answers": ["1921"], "data_source": "hotpotqa"}
    assert len(load_dataset(FIXTURES / "searchr1_mini.parquet", limit=5)) == 5


def test_records_fall_back_to_the_reward_target_and_the_prompt(tmp_path):
    path = tmp_path / "d.jsonl"
    row = {"data_source": "nq", "prompt": [{"role": "user", "content": "Answer it. Question: who is x?\n"}],
           "reward_model": {"ground_truth": {"target": ["X"]}}}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "evidence": ["p1"]}) + "\n")
    records = load_dataset(path)
    assert records[0] == {"id": "nq_0", "question": "who is x?", "golden_answers": ["X"], "data_source": "nq"}
    assert records[1]["evidence"] == ["p1"] and records[1]["id"] == "nq_1"


@pytest.mark.parametrize(
    "name, lines, message",
    [
        ("d.csv", ["a,b"], "cannot read d.csv"),
        ("d.jsonl", ["{}", "{not json"], "is not JSONL (line 2)"),
        ("d.jsonl", [json.dumps({"question": "q", "golden_answers": ["a"], "id": 1})] * 2, "repeats the id '1'"),
        ("d.jsonl", [json.dumps({"question": "q"})], "row 0 has no gold answer"),
        ("d.jsonl", [json.dumps({"golden_answers": ["a"]})], "row 0 has no question"),
        ("d.jsonl", [], "holds no questions"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, name, lines, message):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DGPOError, match=re.escape(message)):
        load_dataset(path)
