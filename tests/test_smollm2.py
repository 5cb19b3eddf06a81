"""End to end against a real pretrained chat model (SmolLM2-135M-Instruct, shipped in a PyPI package)."""

import pytest

from dgpo_agent.agent import CompactSearchAgent
from dgpo_agent.rollout import run_batch, token_trajectory

pytestmark = pytest.mark.slow


def test_real_chat_model_runs_the_graph_end_to_end(smollm2_dir, small_store, small_world):
    from dgpo_agent.world import load_questions

    questions = [r["question"] for r in load_questions(small_world / "test.jsonl")[:2]]
    agent = CompactSearchAgent(str(smollm2_dir), small_store, max_turns=2, max_new_tokens=32)
    single = [agent.graph.invoke({"question": q}) for q in questions]
    for state in single:
        assert state["done"] and 1 <= state["turn"] <= 3
        assert state["segments"][0]["text"].startswith("<|im_start|>")  # rendered by the chat template
        assert all(s["ids"] for s in state["segments"]) and len(token_trajectory(state).response_ids) > 0
    # The batched runner gives the same greedy trajectories as the graph, with a real model: the same
    # tokens and steps; log-probs agree up to float noise from padding.
    batched = run_batch(questions, agent.policy, agent.retriever, agent.config)
    tokens = lambda states: [[(s["role"], s["text"], s["ids"]) for s in st["segments"]] for st in states]  # noqa: E731
    assert tokens(batched) == tokens(single)
    assert [s["steps"] for s in batched] == [s["steps"] for s in single]
    for a, b in zip(batched, single):
        assert token_trajectory(a).logprobs == pytest.approx(token_trajectory(b).logprobs, abs=1e-4)


def test_a_prompted_chat_model_searches_in_the_chat_format_made_for_it(smollm2_dir, small_store, small_world):
    """Prompted with Search-R1's layout SmolLM2 answers in prose and never acts (bench/README.md); with
    documents in user turns and two worked examples it searches, and the documents come back as a user
    turn of its own chat template."""
    from dgpo_agent.world import load_questions

    questions = [r["question"] for r in load_questions(small_world / "test.jsonl")[:3]]
    agent = CompactSearchAgent(str(smollm2_dir), small_store, max_turns=1, max_new_tokens=48, observations="user", examples=2)
    states = run_batch(questions, agent.policy, agent.retriever, agent.config)
    for state in states:
        first = state["steps"][[s["kind"] for s in state["steps"]].index("search")]
        assert first["turn"] == 1 and first["query"].lower() not in ("and", "query")
        observation = state["segments"][2]
        assert observation["role"] == "env" and observation["text"].startswith("<|im_end|>\n<|im_start|>user\n<information>")
        assert observation["text"].endswith("<|im_start|>assistant\n")


def test_real_cpu_smoke_runs_every_stage_on_real_wikipedia_and_serves_the_result(tmp_path):
    """The real path at a few questions and steps: the Wikipedia sample (its first articles), SmolLM2
    fine-tuned on the evidence demonstrator's trajectories as the teacher, a student cut to a third of
    its layers, TGO, the cold start, DGPO; the report gives each model's EM, hit ratio and
    invalid-action rate on the hand-written test questions, and the final policy answers through
    `CompactSearchAgent.from_pretrained`."""
    from dgpo_agent.agent import CompactSearchAgent
    from dgpo_agent.training.config import load_config
    from dgpo_agent.training.pipeline import run_pipeline
    from dgpo_agent.training.run import RunDir

    pytest.importorskip("gensim")
    cfg = load_config("real-cpu-smoke", out=tmp_path / "run")
    summaries = run_pipeline(cfg)
    assert list(summaries) == ["world", "index", "oracle", "base", "teacher", "tgo", "cold-start", "rl", "results"]
    assert list(summaries["oracle"]) == ["train"] and summaries["oracle"]["train"]["em"] > 0.5  # grounded demonstrations
    assert len(summaries["base"]["layers_kept"]) == cfg.base.student_layers and summaries["base"]["layers_kept"][-1] == 29
    assert summaries["teacher"]["source"] == "smollm2-135m-instruct, fine-tuned" and summaries["tgo"]["all"]["correct"] > 0
    assert list(summaries["results"]) == ["base-student", "teacher", "cold-start-kd", "dgpo"]
    report = (tmp_path / "run/report.md").read_text()
    assert "Test EM (greedy, the hand-written test questions on the Wikipedia sample" in report
    assert "| model | EM | hit ratio | invalid-action rate |" in report and "oracle (ceiling)" not in report
    run = RunDir(tmp_path / "run")
    out = CompactSearchAgent.from_pretrained(run.policy("dgpo"), max_new_tokens=24).invoke("What is the capital of Alabama?")
    assert out["steps"]
