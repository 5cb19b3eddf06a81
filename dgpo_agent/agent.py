"""``CompactSearchAgent``: the class apps import.

It binds a policy (a checkpoint, a Hugging Face name, a server URL, or the world's scripted oracle) to
a store (a Chroma path or URL, or any LangChain retriever) and runs the agent graph. ``invoke`` and
``stream`` go through the LangGraph graph; ``batch`` uses the batched runner, which shares the graph's
step logic and returns the same trajectories for a greedy model.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, TypedDict

from dgpo_agent.backends.base import Policy, SamplingParams
from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import PROTOCOL_VERSION, ChatFormat
from dgpo_agent.rollout import AgentConfig, check_question, run_batch
from dgpo_agent.store import is_url
from dgpo_agent.state import AgentState, Step, transcript

AGENT_FILE = "dgpo_agent.json"  # written beside a checkpoint: the agent it was trained as


@dataclass(frozen=True)
class AgentRecord:
    """What ``dgpo_agent.json`` beside a checkpoint holds: everything needed to rebuild the agent the
    model was trained as. The store (a local one as an absolute path, so the checkpoint loads from any
    working directory), its collection and the embedder it was indexed with (None: the packaged
    MiniLM), the turn and document budgets, the chat format (``observations`` and ``examples``,
    ``protocol.ChatFormat``) and the protocol version."""

    store: str
    collection: str = "dgpo"
    embedder: str | None = None
    max_turns: int = 4
    top_k: int = 3
    observations: str = "inline"
    examples: int = 0
    protocol: str = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        store = str(self.store)
        object.__setattr__(self, "store", store if is_url(store) else str(Path(store).resolve()))

    def write(self, checkpoint: str | Path) -> Path:
        path = Path(checkpoint) / AGENT_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, checkpoint: str | Path) -> AgentRecord | None:
        """The record beside ``checkpoint``, or None when it has none (a hub name, a URL, a bare model)."""
        path = Path(str(checkpoint)) / AGENT_FILE
        if not path.is_file():
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        record = cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in fields})
        if record.protocol != PROTOCOL_VERSION:
            raise DGPOError(
                f"{checkpoint} was trained with protocol {record.protocol}; this dgpo-agent speaks {PROTOCOL_VERSION}: "
                "install the dgpo-agent release that trained it"
            )
        return record

    def agent_settings(self) -> dict[str, Any]:
        """The ``CompactSearchAgent`` keyword arguments this record fixes."""
        return {
            "collection": self.collection, "max_turns": self.max_turns, "top_k": self.top_k,
            "observations": self.observations, "examples": self.examples,
        }


def save_checkpoint(
    path: str | Path, model: Any, tokenizer: Any, store: Any, collection: str = "dgpo", max_turns: int = 4, top_k: int = 3
) -> Path:
    """Save a model and tokenizer with the record ``from_pretrained`` (and ``dgpo-agent chat``) read."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    AgentRecord(str(store), collection=collection, max_turns=max_turns, top_k=top_k).write(path)
    return path


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
    """A Policy from a spec: ``"oracle"``, a Policy instance, a server URL, a path, a hub name or a
    packaged model's name (``smollm2-135m-instruct``)."""
    if isinstance(model, str) and model == "oracle":
        from dgpo_agent.world import OraclePolicy

        return OraclePolicy()
    from dgpo_agent import smollm2
    from dgpo_agent.backends import load_policy

    return load_policy(smollm2.resolve(model) if isinstance(model, str) else model, **kwargs)


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
        collection: str = "dgpo",
        max_turns: int = 4,
        top_k: int = 3,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
        observations: str = "inline",
        examples: int = 0,
        checkpointer: Any = None,
        **policy_kwargs: Any,
    ) -> None:
        from dgpo_agent.store import open_retriever

        if model is None:
            raise DGPOError("no model given: pass a checkpoint directory, a Hugging Face name, a server URL or 'oracle'")
        if store is None:
            raise DGPOError("no store given: pass a Chroma directory or URL, or a LangChain retriever")
        sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        fmt = ChatFormat(observations=observations, examples=examples)
        self.config = AgentConfig(max_turns=max_turns, top_k=top_k, sampling=sampling, format=fmt)  # checked before anything loads
        self.retriever = open_retriever(store, collection, device=policy_kwargs.get("device") or "cpu")
        self.policy = resolve_policy(model, **policy_kwargs)
        self.checkpointer = checkpointer
        self._graph = None

    @classmethod
    def from_pretrained(cls, path: str | Path, store: Any = None, **kwargs: Any) -> "CompactSearchAgent":
        """Load a trained checkpoint as the agent it was trained as: its store, collection, turns and
        documents per search come from its record (``dgpo_agent.json``); keyword arguments override them."""
        record = AgentRecord.read(path)
        if store is None and record is None:
            raise DGPOError(f"no store recorded beside {path} ({AGENT_FILE}): pass store=<Chroma directory or URL>")
        settings = record.agent_settings() if record else {}
        return cls(str(path), store if store is not None else record.store, **{**settings, **kwargs})

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
