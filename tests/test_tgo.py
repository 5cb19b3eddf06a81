"""Teacher-generated outputs: sampled rollouts with token ids, their yield, resumption."""

import json

from dgpo_agent.rollout import AgentConfig
import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.tgo import TGOConfig, check_yield, correct_rows, generate_tgo, tgo_yield
from tests.fakes import KeywordRetriever, ScriptedPolicy

RECORDS = [
    {"id": f"q{i}", "question": f"Where was person {i} born?", "golden_answers": ["Vellor"], "data_source": src}
    for i, src in enumerate(["world_single", "world_single", "world_bridge"])
]


def script(question, turn):
    """Right for persons 0 and 2, wrong for person 1; always one search first."""
    if turn == 0:
        return "<think>search</think><search> Zentrath Doglassoun born </search>"
    return "<answer> Vellor </answer>" if "person 1" not in question else "<answer> Paris </answer>"


def test_tgo_keeps_token_ids_and_reports_the_yield(tmp_path):
    teacher = ScriptedPolicy(script, tokenize=True)
    path = tmp_path / "tgo.jsonl"
    report = generate_tgo(teacher, KeywordRetriever(), RECORDS, TGOConfig(samples_per_question=2), AgentConfig(), path)
    assert report["all"] == {"samples": 6, "correct": 4, "yield": 0.6667, "questions": 3, "questions_solved": 2}
    assert report["world_single"]["correct"] == 2 and report["world_bridge"]["yield"] == 1.0
    rows = list(correct_rows(path))
    assert sorted(r["id"] for r in rows) == ["q0#0", "q0#1", "q2#0", "q2#1"]
    for row in rows:
        assert len(row["response_ids"]) == len(row["env_mask"]) == len(row["logprobs"])
        info = "".join(chr(i) for i, m in zip(row["response_ids"], row["env_mask"]) if m)
        assert info.startswith("\n\n<information>") and "<answer>" not in info
        model = "".join(chr(i) for i, m in zip(row["response_ids"], row["env_mask"]) if not m)
        assert model.endswith("<answer> Vellor </answer>")


def test_tgo_resumes_without_regenerating(tmp_path):
    path = tmp_path / "tgo.jsonl"
    generate_tgo(ScriptedPolicy(script, tokenize=True), KeywordRetriever(), RECORDS[:2], TGOConfig(samples_per_question=1), AgentConfig(), path)
    with path.open("a") as f:
        f.write('{"id": "cut mid-li')  # an interrupted write
    again = ScriptedPolicy(script, tokenize=True)
    report = generate_tgo(again, KeywordRetriever(), RECORDS, TGOConfig(samples_per_question=1), AgentConfig(), path)
    assert report["all"]["samples"] == 3
    assert again.calls == [1, 1]  # only the new question was rolled out
    assert [json.loads(line)["id"] for line in path.open()] == ["q0#0", "q1#0", "q2#0"]


def test_a_teacher_with_nothing_right_stops_the_run_with_the_usual_fix():
    """A prompted chat model as teacher answers in prose and gets nothing right; the run used to stop with
    "train the teacher longer", which cannot help it."""
    rows = [{**r, "question_id": r["id"], "scores": {"em": 0.0}} for r in RECORDS]
    check_yield(tgo_yield(rows[:1] + [{**rows[1], "scores": {"em": 1.0}}]))  # one right: nothing to say
    with pytest.raises(DGPOError, match=r"none of its 3 sampled .* needs `agent: \{observations: user, examples: 2\}`"):
        check_yield(tgo_yield(rows))

