"""The agent as a LangGraph ``StateGraph``: think → (search → think)* → answer.

Nodes are thin: each calls the policy or the retriever for its one question and hands the result to
the shared step functions in ``rollout``, which the batched runner uses too. Routing lives in the
conditional edges. Steps stream through ``graph.stream`` and states work with any checkpointer.
"""

from __future__ import annotations

from typing import Any

from dgpo_agent import rollout
from dgpo_agent.backends.base import Policy
from dgpo_agent.rollout import AgentConfig
from dgpo_agent.state import AgentState


def build_graph(policy: Policy, retriever: Any, config: AgentConfig | None = None, checkpointer: Any = None):
    """Compile the agent graph for a policy and a retriever (anything with ``search(queries, k)``).

    Invoke it with ``{"question": "..."}``; one thread of a checkpointer holds one question.
    """
    from langgraph.graph import END, START, StateGraph

    config = config or AgentConfig()

    def think(state: AgentState) -> dict:
        update: dict = {}
        if not state.get("segments"):
            update = rollout.start(state.get("question", ""), policy, config)
            state = {**state, **update}
        completion = policy.generate([rollout.context(state)], rollout.turn_sampling(config.sampling, state["turn"]))[0]
        step = rollout.after_generation(state, completion, config)
        return {**update, **step, "segments": update.get("segments", []) + step["segments"]}

    def search(state: AgentState) -> dict:
        docs = retriever.search([state["pending"]["content"]], config.top_k)[0]
        return rollout.after_search(state, docs, policy, config)

    def invalid(state: AgentState) -> dict:
        return rollout.after_invalid(state, policy, config)

    def answer(state: AgentState) -> dict:
        return rollout.after_answer(state)

    graph = StateGraph(AgentState)
    graph.add_node("think", think)
    graph.add_node("search", search)
    graph.add_node("invalid", invalid)
    graph.add_node("answer", answer)
    graph.add_edge(START, "think")
    graph.add_conditional_edges("think", rollout.route, ["search", "answer", "invalid"])
    graph.add_edge("search", "think")
    graph.add_conditional_edges("invalid", lambda s: END if s.get("done") else "think", ["think", END])
    graph.add_edge("answer", END)
    # Each turn passes through at most three nodes; leave LangGraph's step limit room for every turn.
    return graph.compile(checkpointer=checkpointer).with_config(recursion_limit=3 * (config.max_turns + 2))
