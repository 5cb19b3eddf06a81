"""The agent's step logic, shared by the LangGraph graph and the batched runner.

Each function here turns one observation of the world (a generation, a set of retrieved documents)
into a state update. The graph's nodes call them for one question; ``run_batch`` calls them for many
questions with one generation call and one retrieval call per turn. Because both paths run the same
functions and merge updates the same way, a greedy model gives identical trajectories through either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Sequence

from dgpo_agent.backends.base import Completion, Context, Policy, SamplingParams, derived_seed
from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import ChatFormat, correction, information, parse_action
from dgpo_agent.state import AgentState, Doc, Segment, Step, merge

Route = Literal["search", "answer", "invalid"]
OVERFLOW = "context_overflow"  # the reason an invalid step gives when the context outgrew the model's window


@dataclass(frozen=True)
class AgentConfig:
    """How the agent runs.

    ``max_turns`` is the number of rounds in which a search is executed (Search-R1's ``max_turns``);
    a trajectory that has not answered by then gets one last turn in which only an answer counts, so a
    run makes at most ``max_turns + 1`` generations. ``top_k`` documents are returned per search.
    ``format`` lays the protocol out in the model's chat: where the environment's text goes and how
    many worked examples come first (``protocol.ChatFormat``; the default is Search-R1's).
    """

    max_turns: int = 4
    top_k: int = 3
    sampling: SamplingParams = field(default_factory=SamplingParams)
    format: ChatFormat = field(default_factory=ChatFormat)

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise DGPOError(f"max_turns must be at least 1 (got {self.max_turns})")
        if self.top_k < 1:
            raise DGPOError(f"top_k must be at least 1 (got {self.top_k})")


def check_question(question: object) -> None:
    """Reject an empty question (callers run this before loading any model or store)."""
    if not isinstance(question, str) or not question.strip():
        raise DGPOError("empty question: pass a non-empty question string")


def start(question: str, policy: Policy, config: AgentConfig) -> AgentState:
    """A fresh state for ``question``, with the policy's rendered prompt as the first segment."""
    check_question(question)
    return {
        "question": question.strip(),
        "segments": [policy.prompt(question.strip(), config.format)],
        "steps": [],
        "turn": 0,
        "pending": None,
        "answer": None,
        "done": False,
    }


def context(state: AgentState) -> Context:
    """What the policy continues for this state."""
    return Context(question=state["question"], segments=list(state["segments"]))


def turn_sampling(sampling: SamplingParams, turn: int) -> SamplingParams:
    """The sampling settings of one turn. A seeded run derives a seed per turn from its seed, so each
    turn draws fresh random numbers (a backend seeds every call anew, and with one seed for all turns
    turn 2 would replay turn 1's draws) while the whole trajectory stays repeatable."""
    if sampling.seed is None:
        return sampling
    return dataclasses.replace(sampling, seed=derived_seed(sampling.seed, turn))


def after_generation(state: AgentState, completion: Completion, config: AgentConfig) -> dict:
    """The model's turn: keep its exact tokens, record its thoughts, and hold its action as pending."""
    turn = state["turn"] + 1
    action = parse_action(completion.text)
    segment: Segment = {
        "role": "model",
        "text": completion.text,
        "ids": completion.token_ids,
        "logprobs": completion.logprobs,
    }
    thinks: list[Step] = [{"kind": "think", "turn": turn, "text": t} for t in action.thinks]
    pending = {"kind": action.kind, "content": action.content, "reason": action.reason, "text": completion.text}
    if completion.overflow:
        pending.update(kind="invalid", content="", reason=OVERFLOW)
    elif action.kind == "search" and turn > config.max_turns:
        pending.update(kind="invalid", reason="turn_limit")
    return {"segments": [segment], "steps": thinks, "turn": turn, "pending": pending}


def route(state: AgentState) -> Route:
    """Which node handles the pending action."""
    return state["pending"]["kind"]


def after_search(state: AgentState, docs: Sequence[Doc], policy: Policy, config: AgentConfig) -> dict:
    """The environment's turn after a search: the escaped documents inside ``<information>``."""
    segment = policy.observe(information(docs), state["segments"][-1], config.format)
    step: Step = {"kind": "search", "turn": state["turn"], "query": state["pending"]["content"], "docs": list(docs)}
    return {"segments": [segment], "steps": [step], "pending": None}


def after_invalid(state: AgentState, policy: Policy, config: AgentConfig) -> dict:
    """An invalid action gets the corrective observation, or ends the run once the turns are spent or
    the context no longer fits the model's window."""
    pending = state["pending"]
    step: Step = {"kind": "invalid", "turn": state["turn"], "text": pending["text"], "reason": pending["reason"]}
    if state["turn"] > config.max_turns or pending["reason"] == OVERFLOW:
        return {"steps": [step], "pending": None, "done": True}
    segment = policy.observe(correction(config.format), state["segments"][-1], config.format)
    return {"segments": [segment], "steps": [step], "pending": None}


def after_answer(state: AgentState) -> dict:
    """The answer ends the run."""
    answer = state["pending"]["content"]
    step: Step = {"kind": "answer", "turn": state["turn"], "answer": answer}
    return {"steps": [step], "answer": answer, "pending": None, "done": True}


def run_batch(
    questions: Sequence[str], policy: Policy, retriever, config: AgentConfig | None = None
) -> list[AgentState]:
    """Run the agent over many questions at once: per turn, one generation call for every unfinished
    trajectory and one retrieval call for every pending search."""
    config = config or AgentConfig()
    states = [start(q, policy, config) for q in questions]
    while active := [s for s in states if not s["done"]]:
        # Every unfinished trajectory is at the same turn: they all started together.
        completions = policy.generate([context(s) for s in active], turn_sampling(config.sampling, active[0]["turn"]))
        for state, completion in zip(active, completions, strict=True):
            merge(state, after_generation(state, completion, config))
        searching = [s for s in active if route(s) == "search"]
        if searching:
            results = retriever.search([s["pending"]["content"] for s in searching], config.top_k)
            for state, docs in zip(searching, results, strict=True):
                merge(state, after_search(state, docs, policy, config))
        for state in active:
            if state["pending"] is not None:
                kind = route(state)
                merge(state, after_answer(state) if kind == "answer" else after_invalid(state, policy, config))
    return states


@dataclass
class TokenTrajectory:
    """A trajectory as token ids, for training.

    ``response_ids`` is everything after the prompt. ``env_mask`` is 1 on tokens the environment
    inserted (retrieved documents, corrective observations) and 0 on tokens the model generated;
    ``loss_mask`` is its complement (TRL calls that one ``env_mask``). ``logprobs`` holds the sampling
    log-probabilities of model tokens (0.0 on environment tokens) when the backend reported them.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    env_mask: list[int]
    logprobs: list[float] | None

    @property
    def loss_mask(self) -> list[int]:
        return [1 - m for m in self.env_mask]


def token_trajectory(state: AgentState) -> TokenTrajectory:
    """Flatten a state into token ids and the environment mask; needs a tokenizing policy."""
    prompt, *rest = state["segments"]
    if prompt["ids"] is None or any(seg["ids"] is None for seg in rest):
        raise DGPOError("this trajectory has no token ids: run it with a tokenizing backend (transformers or vLLM)")
    response, env_mask, logprobs = [], [], []
    have_logprobs = all(seg.get("logprobs") is not None for seg in rest if seg["role"] == "model")
    for seg in rest:
        is_env = seg["role"] == "env"
        response += seg["ids"]
        env_mask += [int(is_env)] * len(seg["ids"])
        logprobs += [0.0] * len(seg["ids"]) if is_env or not have_logprobs else seg["logprobs"]
    return TokenTrajectory(list(prompt["ids"]), response, env_mask, logprobs if have_logprobs else None)
