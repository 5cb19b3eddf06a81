"""The agent graph and the batched runner on scripted policies and an in-memory retriever."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgpo_agent.backends.base import SamplingParams
from dgpo_agent.errors import DGPOError
from dgpo_agent.graph import build_graph
from dgpo_agent.protocol import CORRECTIVE_OBSERVATION
from dgpo_agent.rollout import AgentConfig, run_batch, token_trajectory
from dgpo_agent.state import transcript
from tests.fakes import KeywordRetriever, ScriptedPolicy

def two_hop(question, turn):
    return [
        "<think>I need the founder.</think>\n<search> Kreaxse Labs founder </search>",
        "<think>Now the birthplace.</think>\n<search> Zentrath Doglassoun born </search>",
        "<think>Got it.</think>\n<answer> Vellor </answer>",
    ][min(turn, 2)]


def invoke(policy, retriever=None, config=None, question="Where was the founder of Kreaxse Labs born?"):
    graph = build_graph(policy, retriever or KeywordRetriever(), config or AgentConfig())
    return graph.invoke({"question": question})


def test_graph_thinks_searches_reads_and_answers():
    state = invoke(ScriptedPolicy(two_hop))
    assert [s["kind"] for s in state["steps"]] == ["think", "search", "think", "search", "think", "answer"]
    assert state["answer"] == "Vellor" and state["done"] and state["turn"] == 3
    first_search = state["steps"][1]
    assert first_search["query"] == "Kreaxse Labs founder" and first_search["docs"][0]["id"] == "p1"
    assert len(first_search["docs"]) == 3
    assert "<information>Doc 1(Title: Kreaxse Labs)" in transcript(state)


def test_top_k_is_configurable():
    state = invoke(ScriptedPolicy(two_hop), config=AgentConfig(top_k=1))
    assert [len(s["docs"]) for s in state["steps"] if s["kind"] == "search"] == [1, 1]


def test_injected_answer_in_a_passage_does_not_change_the_parsed_answer():
    script = lambda q, t: ["<search> Kreaxse injected </search>", "<answer> Vellor </answer>"][t]  # noqa: E731
    state = invoke(ScriptedPolicy(script))
    assert state["steps"][0]["docs"][0]["id"] == "p3"
    assert state["answer"] == "Vellor"
    info = state["segments"][2]["text"]
    assert info.count("</information>") == 1 and "<answer>" not in info


def test_invalid_action_gets_the_corrective_observation():
    script = lambda q, t: ["I will just guess", "<answer> Vellor </answer>"][t]  # noqa: E731
    state = invoke(ScriptedPolicy(script))
    assert [s["kind"] for s in state["steps"]] == ["invalid", "answer"]
    assert state["steps"][0]["reason"] == "no_action"
    assert state["segments"][2] == {"role": "env", "text": CORRECTIVE_OBSERVATION, "ids": None}


def test_after_the_last_allowed_search_the_model_must_answer():
    policy = ScriptedPolicy(lambda q, t: "<search> Kreaxse </search>")
    state = invoke(policy, config=AgentConfig(max_turns=2))
    kinds = [s["kind"] for s in state["steps"]]
    assert kinds == ["search", "search", "invalid"] and state["steps"][-1]["reason"] == "turn_limit"
    assert state["answer"] is None and state["done"] and len(policy.calls) == 3


def test_empty_question_is_a_clear_error():
    with pytest.raises(DGPOError, match="empty question"):
        invoke(ScriptedPolicy(two_hop), question="   ")


def test_steps_stream_live_and_the_graph_works_with_a_checkpointer():
    from langgraph.checkpoint.memory import InMemorySaver

    graph = build_graph(ScriptedPolicy(two_hop), KeywordRetriever(), checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    nodes = [next(iter(update)) for update in graph.stream({"question": "Q?"}, config, stream_mode="updates")]
    assert nodes == ["think", "search", "think", "search", "think", "answer"]
    saved = graph.get_state(config).values
    assert saved["answer"] == "Vellor" and len(saved["steps"]) == 6


GARBAGE = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            "<search>",
            "</search>",
            "<search></search>",
            "<answer>",
            "<answer></answer>",
            "<think>",
            "<information>x</information>",
            "<search><search>q</search></search>",
            "<answer><search>x</search></answer>",
            "x" * 10_000,
            "\x00\uffff" * 100,
        ]
    ),
    st.lists(st.sampled_from(["<search>", "</search>", "<answer>", "</answer>", "<think>", "q", " "]), max_size=30).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns=st.lists(GARBAGE, min_size=1, max_size=8), max_turns=st.integers(1, 4))
def test_malformed_output_never_crashes_and_the_run_ends_within_max_turns(turns, max_turns):
    policy = ScriptedPolicy(lambda q, t: turns[t % len(turns)])
    retriever = KeywordRetriever()
    state = invoke(policy, retriever, AgentConfig(max_turns=max_turns))
    assert state["done"]
    assert state["turn"] <= max_turns + 1 and len(policy.calls) == state["turn"]
    assert sum(s["kind"] == "search" for s in state["steps"]) <= max_turns
    assert state["answer"] is None or state["steps"][-1]["kind"] == "answer"


def test_batched_run_matches_the_graph_with_one_call_per_turn():
    def script(question, turn):  # behaviour depends on the question, so rows finish at different turns
        n = int(question.split()[-1].rstrip("?"))
        return two_hop(question, turn) if n % 3 else ["garbage", "<answer> x </answer>"][min(turn, 1)]

    questions = [f"Question number {i}?" for i in range(9)]
    single = [invoke(ScriptedPolicy(script, tokenize=True), question=q) for q in questions]
    policy, retriever = ScriptedPolicy(script, tokenize=True), KeywordRetriever()
    batched = run_batch(questions, policy, retriever, AgentConfig())
    for a, b in zip(single, batched):
        assert {k: a[k] for k in ("steps", "segments", "answer", "turn")} == {k: b[k] for k in ("steps", "segments", "answer", "turn")}
    assert policy.calls == [9, 9, 6]  # one generation call per turn for all unfinished rows
    assert [len(c) for c in retriever.calls] == [6, 6]  # one retrieval call per turn


class SeedRecorder(ScriptedPolicy):
    """A scripted policy that records the seed each generation call was given."""

    def __init__(self, script):
        super().__init__(script)
        self.seeds = []

    def generate(self, contexts, params):
        self.seeds.append(params.seed)
        return super().generate(contexts, params)


def test_each_turn_of_a_seeded_run_gets_its_own_seed_in_the_graph_and_the_batch():
    """A backend seeds every call anew, so one seed for every turn would make turn 2 replay turn 1's
    random draws: the turns of a rollout would not be independent samples of the policy."""
    config = AgentConfig(sampling=SamplingParams(temperature=1.0, seed=7))
    graph_policy, batch_policy = SeedRecorder(two_hop), SeedRecorder(two_hop)
    invoke(graph_policy, config=config)
    run_batch(["Where was the founder of Kreaxse Labs born?"] * 2, batch_policy, KeywordRetriever(), config)
    assert len(set(graph_policy.seeds)) == len(graph_policy.seeds) == 3
    assert batch_policy.seeds == graph_policy.seeds  # the same turn gets the same seed on either path
    again = SeedRecorder(two_hop)
    run_batch(["Q?"], again, KeywordRetriever(), config)
    assert again.seeds == graph_policy.seeds  # repeatable
    unseeded = SeedRecorder(two_hop)
    run_batch(["Q?"], unseeded, KeywordRetriever(), AgentConfig(sampling=SamplingParams(temperature=1.0)))
    assert unseeded.seeds == [None, None, None]


def test_token_trajectory_masks_environment_tokens():
    state = run_batch(["Q?"], ScriptedPolicy(two_hop, tokenize=True), KeywordRetriever())[0]
    traj = token_trajectory(state)
    segments = state["segments"]
    assert traj.prompt_ids == [ord(c) for c in segments[0]["text"]]
    assert traj.response_ids == [ord(c) for c in "".join(s["text"] for s in segments[1:])]
    expected = [int(s["role"] == "env") for s in segments[1:] for _ in s["text"]]
    assert traj.env_mask == expected and traj.loss_mask == [1 - m for m in expected]
    assert traj.logprobs == [0.0 if m else -0.5 for m in expected]


def test_token_trajectory_needs_token_ids():
    state = run_batch(["Q?"], ScriptedPolicy(two_hop), KeywordRetriever())[0]
    with pytest.raises(DGPOError, match="tokenizing backend"):
        token_trajectory(state)


def test_config_is_validated():
    with pytest.raises(DGPOError, match="max_turns"):
        AgentConfig(max_turns=0)
    with pytest.raises(DGPOError, match="top_k"):
        AgentConfig(top_k=0)
    assert SamplingParams().greedy and not SamplingParams(temperature=1.0).greedy
