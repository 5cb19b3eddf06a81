"""Per-trajectory scores and their aggregation per ``data_source``.

Answers are scored from the answer step the model produced, never from the prompt or the retrieved
text (see ``protocol``). Aggregates are plain means, rounded so that reports are byte-stable.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from dgpo_agent.protocol import exact_match, f1_score, substring_hit


def score(output: Mapping, record: Mapping) -> dict[str, float]:
    """Scores of one agent output against its question record (``golden_answers``, ``evidence``)."""
    golds = record["golden_answers"]
    answer = output.get("answer")
    searches = [s for s in output["steps"] if s["kind"] == "search"]
    retrieved = {d["id"] for s in searches for d in s["docs"]}
    docs_text = " ".join(d["text"] for s in searches for d in s["docs"])
    evidence = record.get("evidence") or []
    scores = {
        "em": exact_match(answer, golds),
        "f1": f1_score(answer, golds),
        "answered": float(answer is not None),
        "searches": float(len(searches)),
        "hit": substring_hit(docs_text, golds),
    }
    if evidence:
        scores["evidence_recall"] = sum(e in retrieved for e in evidence) / len(evidence)
    return scores


def aggregate(rows: Iterable[tuple[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of each score per data source and overall (key ``all``), with the question count ``n``."""
    groups: dict[str, list[Mapping[str, float]]] = defaultdict(list)
    for source, scores in rows:
        groups[source].append(scores)
        groups["all"].append(scores)
    return {source: _mean(items) for source, items in sorted(groups.items())}


def _mean(items: list[Mapping[str, float]]) -> dict[str, float]:
    keys = sorted({k for item in items for k in item})
    means = {k: round(sum(i[k] for i in items if k in i) / sum(k in i for i in items), 4) for k in keys}
    return {"n": len(items), **means}
