"""The small interface every policy implements: transformers, an OpenAI-compatible server, vLLM,
and the scripted oracle. The graph, the batched runner and training only ever talk to this."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import STOP_STRINGS, ChatFormat
from dgpo_agent.state import Segment


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings, always passed explicitly (evaluation is greedy unless told otherwise).

    ``temperature == 0`` means greedy decoding. ``max_new_tokens`` bounds one turn, not the trajectory.
    ``seed`` makes sampling repeatable where the backend supports it; a backend seeds each call with it,
    and the agent derives a fresh one for every turn (``rollout.turn_sampling``).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = STOP_STRINGS
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise DGPOError(f"temperature must be a finite number of at least 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise DGPOError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.max_new_tokens < 1:
            raise DGPOError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise DGPOError(f"seed must be in [0, 2**63) (got {self.seed})")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def derived_seed(seed: int, part: object) -> int:
    """A seed for one part (a turn, a row) of what ``seed`` seeds: distinct parts draw independent
    streams, and the same part always the same one."""
    digest = hashlib.blake2b(f"{seed}:{part}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class Completion:
    """One generation. ``token_ids`` are the sampled ids (None for text-only backends) and
    ``logprobs`` their log-probabilities under the sampling distribution when the backend reports them.
    ``overflow``: the context did not fit the model's window, so nothing was generated."""

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    overflow: bool = False


@dataclass
class Context:
    """What a policy continues: the question (for scripted policies) and the segments so far, the
    rendered prompt first."""

    question: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(s["text"] for s in self.segments)


@runtime_checkable
class Policy(Protocol):
    """A generation backend.

    ``prompt`` renders the opening segment for a question (through the chat template when there is
    one); ``encode`` tokenizes text (None when the backend has no tokenizer); ``observe`` renders the
    environment's text after the model turn ``after``; both follow the chat format ``fmt``
    (``protocol.ChatFormat``); ``generate`` continues every context once, in one batched
    call, stopping after a stop string.
    """

    def prompt(self, question: str, fmt: ChatFormat = ChatFormat()) -> Segment: ...

    def encode(self, text: str) -> list[int] | None: ...

    def observe(self, text: str, after: Segment, fmt: ChatFormat) -> Segment: ...

    def generate(self, contexts: Sequence[Context], params: SamplingParams) -> list[Completion]: ...


@runtime_checkable
class RolloutEngine(Policy, Protocol):
    """A policy the RL trainer rolls out with, generating from weights it may hold a copy of.

    ``weights_version`` names the weights it generates with. The trainer counts its own versions (one
    per update) and calls ``load_weights(model, version)`` before the first generation after they
    changed: lazily, once per RL step however many optimizer steps it took, as TRL and verl sync
    their vLLM engines. The transformers backend is one (sharing the trained model, or loading its
    weights into a copy in another dtype or on another device).
    """

    weights_version: int

    def load_weights(self, model: Any, version: int) -> None: ...
