"""Every evaluation metric, defined once on one trajectory, grouped by the ARC capability it measures.

A metric reads an agent output (``answer``, ``steps`` and, for the evidence probes, ``probes``) and a
question record (``golden_answers``, optionally ``evidence``) and returns a float, or None where it is
undefined for that trajectory (recall without gold evidence, the search rates of a run that never
searched). The harness averages these per data source; the evaluators wrap them for LangSmith. What
each one means, and where it departs from the paper, is written in docs/arc.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from dgpo_agent.protocol import exact_match, f1_score, normalize_answer, substring_hit
from dgpo_agent.rollout import OVERFLOW
from dgpo_agent.state import Doc, Step

ACTIONS = ("search", "answer", "invalid")  # one of these per generation: a step of each kind is a turn
PROBES = ("no_think", "think")  # the evidence probes: answer at once, or think first (see evals.probes)


@dataclass(frozen=True)
class Metric:
    """A named per-trajectory score: ``capability`` groups it in reports, ``fn`` computes it."""

    key: str
    capability: str
    description: str
    fn: Callable[[Mapping, Mapping], float | None]


# ----------------------------------------------------------------------------------------- reading


def _steps(output: Mapping, kind: str) -> list[Step]:
    return [s for s in output.get("steps") or [] if s["kind"] == kind]


def _docs(output: Mapping) -> list[Doc]:
    return [d for s in _steps(output, "search") for d in s["docs"]]


def _doc_text(doc: Doc) -> str:
    """What a retrieved document showed the model: its title and text (as in the ``<information>`` block)."""
    return f"{doc['title']} {doc['text']}"


def _turns(output: Mapping) -> set[int]:
    return {s["turn"] for s in output.get("steps") or [] if s["kind"] in ACTIONS}


# ----------------------------------------------------------------------------------------- answer


def em(output: Mapping, record: Mapping) -> float:
    return exact_match(output.get("answer"), record["golden_answers"])


def f1(output: Mapping, record: Mapping) -> float:
    return f1_score(output.get("answer"), record["golden_answers"])


def answered(output: Mapping, record: Mapping) -> float:
    return float(output.get("answer") is not None)


# ----------------------------------------------------------------------------------------- query rewriting


def hit(output: Mapping, record: Mapping) -> float:
    return float(any(substring_hit(_doc_text(d), record["golden_answers"]) for d in _docs(output)))


def evidence_recall(output: Mapping, record: Mapping) -> float | None:
    evidence = record.get("evidence") or []
    if not evidence:
        return None
    retrieved = {d["id"] for d in _docs(output)}
    return sum(e in retrieved for e in evidence) / len(evidence)


def searches(output: Mapping, record: Mapping) -> float:
    return float(len(_steps(output, "search")))


def empty_query(output: Mapping, record: Mapping) -> float | None:
    empty = sum(s.get("reason") == "empty_query" for s in _steps(output, "invalid"))
    attempts = len(_steps(output, "search")) + empty
    return empty / attempts if attempts else None


def duplicate_query(output: Mapping, record: Mapping) -> float | None:
    queries = [normalize_answer(s["query"]) for s in _steps(output, "search")]
    if not queries:
        return None
    return sum(q in queries[:i] for i, q in enumerate(queries)) / len(queries)


# ----------------------------------------------------------------------------------------- source referencing


def _probe_em(mode: str) -> Callable[[Mapping, Mapping], float | None]:
    def probe_em(output: Mapping, record: Mapping) -> float | None:
        probes = output.get("probes")
        return None if not probes else exact_match(probes[mode]["answer"], record["golden_answers"])

    return probe_em


def probe_prefilled(output: Mapping, record: Mapping) -> float | None:
    probes = output.get("probes")
    return None if not probes else sum(probes[mode].get("prefilled", True) for mode in PROBES) / len(PROBES)


# ----------------------------------------------------------------------------------------- thinking


def think_gain(output: Mapping, record: Mapping) -> float | None:
    with_think, without = _probe_em("think")(output, record), _probe_em("no_think")(output, record)
    return None if with_think is None or without is None else with_think - without


def think_rate(output: Mapping, record: Mapping) -> float | None:
    turns = _turns(output)
    thinking = {s["turn"] for s in _steps(output, "think")}
    return len(turns & thinking) / len(turns) if turns else None


def think_words(output: Mapping, record: Mapping) -> float | None:
    thinks = _steps(output, "think")
    return sum(len(s["text"].split()) for s in thinks) / len(thinks) if thinks else None


# ----------------------------------------------------------------------------------------- behaviour


def invalid(output: Mapping, record: Mapping) -> float | None:
    turns = _turns(output)
    return len(_steps(output, "invalid")) / len(turns) if turns else None


def overflow(output: Mapping, record: Mapping) -> float:
    return float(any(s.get("reason") == OVERFLOW for s in _steps(output, "invalid")))


def turns(output: Mapping, record: Mapping) -> float:
    return float(len(_turns(output)))


def answered_without_search(output: Mapping, record: Mapping) -> float:
    return float(output.get("answer") is not None and not _steps(output, "search"))


def grounded(output: Mapping, record: Mapping) -> float | None:
    answer = output.get("answer")
    if answer is None:
        return None
    return float(any(substring_hit(_doc_text(d), answer) for d in _docs(output)))


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("em", "answer", "exact match of the final answer with any gold answer (SQuAD-normalised)", em),
        Metric("f1", "answer", "best token-level F1 of the final answer against the gold answers", f1),
        Metric("answered", "answer", "valid-answer rate: the run ended with a well-formed <answer>", answered),
        Metric("hit", "query_rewriting", "hit ratio: a gold answer occurs in some retrieved document", hit),
        Metric("evidence_recall", "query_rewriting", "share of the gold evidence passages retrieved", evidence_recall),
        Metric("searches", "query_rewriting", "search steps: executed searches per question", searches),
        Metric("empty_query", "query_rewriting", "share of search attempts with an empty query", empty_query),
        Metric("duplicate_query", "query_rewriting", "share of searches repeating an earlier query", duplicate_query),
        Metric("em_no_think", "source_referencing", "EM given the gold evidence, answering at once (w/o think)",
               _probe_em("no_think")),
        Metric("probe_prefilled", "source_referencing",
               "share of probe turns that continued the forced prefix (0 for the scripted oracle)", probe_prefilled),
        Metric("em_think", "thinking", "EM given the gold evidence, thinking first (w/ think)", _probe_em("think")),
        Metric("think_gain", "thinking", "w/ think EM minus w/o think EM", think_gain),
        Metric("think_rate", "thinking", "share of the agent's turns that contain a <think>", think_rate),
        Metric("think_words", "thinking", "mean length of a <think>, in words", think_words),
        Metric("invalid", "behaviour", "invalid-action rate: share of turns without a valid action", invalid),
        Metric("overflow", "behaviour", "the run ended because its context outgrew the model's window", overflow),
        Metric("turns", "behaviour", "generations per question", turns),
        Metric("answered_without_search", "behaviour", "answered without any executed search",
               answered_without_search),
        Metric("grounded", "behaviour", "the answer occurs in a retrieved document (answered runs only)", grounded),
    )
}
CAPABILITIES = ("answer", "query_rewriting", "source_referencing", "thinking", "behaviour")
