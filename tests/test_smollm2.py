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
