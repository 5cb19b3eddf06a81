"""Scripted policies: text-only experts that speak the protocol without a model.

``ScriptedPolicy`` is the Policy protocol around a ``turn(context) -> text`` function; the world's
oracle (``world.OraclePolicy``) and ``EvidencePolicy`` are two. ``EvidencePolicy`` is how a real
corpus gets demonstrations to fine-tune a teacher on: it is given the questions' gold answers, so it
is no ceiling, but it answers only once a retrieved document states the answer (searching the
question, then the question's article), so each of its correct trajectories is grounded in what the
search returned, the behaviour a teacher should learn.
"""

from __future__ import annotations

from typing import Sequence

from dgpo_agent.backends.base import Completion, Context, SamplingParams
from dgpo_agent.protocol import ChatFormat, parse_action, read_documents, render_observation, render_prompt, substring_hit
from dgpo_agent.state import Segment

UNKNOWN = "unknown"


class ScriptedPolicy:
    """The Policy protocol over a scripted ``turn`` (text only: ``encode`` returns None)."""

    def prompt(self, question: str, fmt: ChatFormat = ChatFormat()) -> Segment:
        return Segment(role="prompt", text=render_prompt(question, fmt=fmt), ids=None)

    def encode(self, text: str) -> list[int] | None:
        return None

    def observe(self, text: str, after: Segment, fmt: ChatFormat) -> Segment:
        return Segment(role="env", text=render_observation(text, fmt), ids=None)  # no template: inline

    def generate(self, contexts: Sequence[Context], params: SamplingParams) -> list[Completion]:
        return [Completion(text=self.turn(c)) for c in contexts]

    def turn(self, context: Context) -> str:
        raise NotImplementedError


def think(thought: str) -> str:
    return f"<think> {thought.strip()} </think>"


def answer(thought: str, text: str) -> str:
    return f"{think(thought)}\n<answer> {text} </answer>"


def search(thought: str, query: str) -> str:
    return f"{think(thought)}\n<search> {query} </search>"


def queries(context: Context) -> list[str]:
    """The searches the policy already made in this context."""
    actions = (parse_action(s["text"]) for s in context.segments if s["role"] == "model")
    return [a.content for a in actions if a.kind == "search"]


def documents(context: Context) -> list[tuple[str, str]]:
    """(title, text) of every document the environment returned so far."""
    return [doc for s in context.segments if s["role"] != "model" for doc in read_documents(s["text"])]


class EvidencePolicy(ScriptedPolicy):
    """Answers questions whose gold answers it is given, once a retrieved document states one: it
    searches the question, then the question's ``article`` (when the record names one), then gives up
    with "unknown". ``records`` are question records (``question``, ``golden_answers``, optional
    ``article``)."""

    def __init__(self, records: Sequence[dict]) -> None:
        self.records = {r["question"]: r for r in records}

    def turn(self, context: Context) -> str:
        record = self.records.get(context.question)
        if record is None:
            return answer("I was not given this question.", UNKNOWN)
        golds = record["golden_answers"]
        for title, text in documents(context):
            found = next((g for g in golds if substring_hit(f"{title} {text}", [g])), None)
            if found is not None:
                return answer(f"The document {title} says it: {found}.", found)
        made = [q.casefold() for q in queries(context)]
        wanted = [q for q in (record["question"], record.get("article")) if q and q.casefold() not in made]
        if not wanted:
            return answer("The documents do not say.", UNKNOWN)
        thought = "I need to search for this." if not made else "The results do not say; I will search for the article."
        return search(thought, wanted[0])
