"""``CompactSearchAgent``: the class apps import.

It binds a policy (a checkpoint, a Hugging Face name, a server URL, or the world's scripted oracle) to
a store (a Chroma path or URL, or any LangChain retriever) and runs the agent graph. ``invoke`` and
``stream`` go through the LangGraph graph; ``batch`` uses the batched runner, which shares the graph's
step logic and returns the same trajectories for a greedy model.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence, TypedDict

from dgpo_agent.backends.base import Policy, SamplingParams
from dgpo_agent.errors import DGPOError
from dgpo_agent.rollout import AgentConfig, check_question, run_batch
from dgpo_agent.state import AgentState, Step, transcript

AGENT_FILE = "dgpo_agent.json"  # written beside a checkpoint: which store it was trained with


class AgentOutput(TypedDict):
    """What ``invoke`` returns: the answer (None if the model never gave one) and every step."""

    question: str
    answer: str | None
    steps: list[Step]
    transcript: str


def output(state: AgentState) -> AgentOutput:
    """The public view of a finished state."""
    return {
        "question": state["question"],
        "answer": state.get("answer"),
        "steps": list(state.get("steps", [])),
        "transcript": transcript(state),
    }


def resolve_policy(model: Any, **kwargs: Any) -> Policy:
    """A Policy from a spec: ``"oracle"``, a Policy instance, a server URL, a path or a hub name."""
    if isinstance(model, str) and model == "oracle":
        from dgpo_agent.world import OraclePolicy

        return OraclePolicy()
    from dgpo_agent.backends import load_policy

    return load_policy(model, **kwargs)


def save_checkpoint(path: str | Path, model: Any, tokenizer: Any, store: Any) -> Path:
    """Save a model and tokenizer with the store record ``from_pretrained`` (and ``dgpo-agent chat``) read.

    A local store is recorded as an absolute path, so the checkpoint loads from any working directory.
    """
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return write_store_record(path, store)


def write_store_record(path: str | Path, store: Any) -> Path:
    """Record beside a saved checkpoint which store it searches (a local store as an absolute path)."""
    path = Path(path)
    is_url = isinstance(store, str) and store.startswith(("http://", "https://"))
    record = {"store": store if is_url else str(Path(store).resolve())}
    (path / AGENT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return path


class CompactSearchAgent:
    """A compact search agent: think, search the store, read, answer.

    >>> agent = CompactSearchAgent("runs/tiny/dgpo", store="runs/tiny/world/chroma")  # doctest: +SKIP
    >>> agent.invoke("Who founded Kreaxse Labs?")["answer"]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        store: Any,
        *,
        max_turns: int = 4,
        top_k: int = 3,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
        checkpointer: Any = None,
        **policy_kwargs: Any,
    ) -> None:
        from dgpo_agent.store import open_retriever

        if model is None:
            raise DGPOError("no model given: pass a checkpoint directory, a Hugging Face name, a server URL or 'oracle'")
        if store is None:
            raise DGPOError("no store given: pass a Chroma directory or URL, or a LangChain retriever")
        self.policy = resolve_policy(model, **policy_kwargs)
        self.retriever = open_retriever(store)
        sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        self.config = AgentConfig(max_turns=max_turns, top_k=top_k, sampling=sampling)
        self.checkpointer = checkpointer
        self._graph = None

    @classmethod
    def from_pretrained(cls, path: str | Path, store: Any = None, **kwargs: Any) -> "CompactSearchAgent":
        """Load a trained checkpoint; the store defaults to the one recorded beside it at training time."""
        record = Path(path) / AGENT_FILE
        if store is None and record.is_file():
            store = json.loads(record.read_text())["store"]
        if store is None:
            raise DGPOError(f"no store recorded in {record}: pass store=<Chroma directory or URL>")
        return cls(str(path), store, **kwargs)

    @property
    def graph(self):
        """The compiled LangGraph graph (a LangChain Runnable)."""
        if self._graph is None:
            from dgpo_agent.graph import build_graph

            self._graph = build_graph(self.policy, self.retriever, self.config, self.checkpointer)
        return self._graph

    def _run_config(self, config: dict | None) -> dict:
        config = dict(config or {})
        if self.checkpointer is not None:
            config.setdefault("configurable", {}).setdefault("thread_id", uuid.uuid4().hex)
        return config

    def invoke(self, question: str, config: dict | None = None) -> AgentOutput:
        """Answer one question through the graph."""
        check_question(question)
        return output(self.graph.invoke({"question": question}, self._run_config(config)))

    def stream(self, question: str, config: dict | None = None) -> Iterator[Step]:
        """Yield each step (think, search with its documents, invalid, answer) as the graph runs."""
        check_question(question)
        for update in self.graph.stream({"question": question}, self._run_config(config), stream_mode="updates"):
            for node_update in update.values():
                yield from (node_update or {}).get("steps", [])

    def batch(self, questions: Sequence[str]) -> list[AgentOutput]:
        """Answer many questions with one generation and one retrieval call per turn."""
        for question in questions:
            check_question(question)
        return [output(s) for s in run_batch(questions, self.policy, self.retriever, self.config)]
