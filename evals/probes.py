"""The evidence probes behind Source Referencing and Thinking: the gold evidence handed over, no search.

Each probe is one generation. Its context is the question's prompt (as the agent sees it) followed by
an ``<information>`` block of the record's gold evidence passages, in the record's order and formatted
and placed exactly like search results (in a user turn after an empty reply, for ``user``
observations), and then the start of the model's turn, forced by the harness:

* ``no_think`` ("w/o think"): the turn is prefilled with ``<answer>``, so the model must answer at once;
* ``think`` ("w/ think"): the turn is prefilled with ``<think>``, so the model reasons before answering.

The turn (prefill + completion) is parsed with ``protocol.parse_action``; anything but an answer scores 0.
A policy that cannot continue a prefill (the scripted oracle, which always writes a whole turn of its
own) opens its own tag at once; such a completion is parsed as written, and the row records
``prefilled: false`` so reports can tell.
"""

from __future__ import annotations

import re
from typing import Sequence

from dgpo_agent.backends.base import Context, Policy
from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import ChatFormat, information, parse_action
from dgpo_agent.rollout import AgentConfig
from dgpo_agent.state import Doc, Segment

PREFILLS = {"no_think": "<answer>", "think": "<think>"}
_OWN_TURN_RE = re.compile(r"\s*<(think|search|answer)>")


def run_probes(records: Sequence[dict], policy: Policy, retriever, config: AgentConfig) -> list[dict | None]:
    """Both probes for every record with gold ``evidence`` (None for the others), in one generation call,
    sampled and laid out as the agent's own turns are (``config``)."""
    todo = [r for r in records if r.get("evidence")]
    if not todo:
        return [None] * len(records)
    docs = _evidence(todo, retriever)
    contexts = [
        _context(record, [docs[e] for e in record["evidence"]], prefill, policy, config.format)
        for record in todo
        for prefill in PREFILLS.values()
    ]
    completions = iter(policy.generate(contexts, config.sampling))
    probes = {r["id"]: {mode: parse_turn(PREFILLS[mode], next(completions).text) for mode in PREFILLS} for r in todo}
    return [probes.get(r["id"]) for r in records]


def parse_turn(prefill: str, completion: str) -> dict:
    """The probe's result: the turn's text, its answer (None unless a valid answer), thoughts and reason."""
    prefilled = not _OWN_TURN_RE.match(completion)
    text = prefill + completion if prefilled else completion
    action = parse_action(text)
    return {
        "text": text,
        "answer": action.content if action.kind == "answer" else None,
        "thinks": list(action.thinks),
        "reason": action.reason,
        "prefilled": prefilled,
    }


def _evidence(records: Sequence[dict], retriever) -> dict[str, Doc]:
    """Every gold passage of ``records``, fetched from the store by id in one call."""
    if not callable(getattr(retriever, "get", None)):
        raise DGPOError(
            f"the data has gold evidence ids but a {type(retriever).__name__} cannot fetch passages by id: "
            "evaluate with a Chroma store (or one with get(ids))"
        )
    ids = list(dict.fromkeys(e for r in records for e in r["evidence"]))
    return dict(zip(ids, retriever.get(ids), strict=True))


def _context(record: dict, docs: list[Doc], prefill: str, policy: Policy, fmt: ChatFormat) -> Context:
    prompt = policy.prompt(record["question"], fmt)
    segments: list[Segment] = [
        prompt,
        policy.observe(information(docs), prompt, fmt),
        {"role": "env", "text": prefill, "ids": policy.encode(prefill)},
    ]
    return Context(question=record["question"].strip(), segments=segments)
