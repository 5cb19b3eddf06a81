"""Per-trajectory scores and their aggregation per ``data_source``.

Answers are scored from the answer step the model produced, never from the prompt or the retrieved
text (see ``protocol``); the metrics themselves are defined in ``metrics``. Aggregates are plain
means, rounded so that reports are byte-stable.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from dgpo_agent.evals.metrics import METRICS


def score(output: Mapping, record: Mapping) -> dict[str, float]:
    """Every metric defined for one agent output against its question record (``golden_answers``,
    ``evidence``); a metric undefined for this trajectory is left out, not scored 0."""
    values = {key: metric.fn(output, record) for key, metric in METRICS.items()}
    return {key: value for key, value in values.items() if value is not None}


def aggregate(rows: Iterable[tuple[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of each score per data source and overall (key ``all``), with the question count ``n``.

    A score is averaged over the trajectories that define it."""
    groups: dict[str, list[Mapping[str, float]]] = defaultdict(list)
    for source, scores in rows:
        groups[source].append(scores)
        groups["all"].append(scores)
    return {source: _mean(items) for source, items in sorted(groups.items())}


def _mean(items: list[Mapping[str, float]]) -> dict[str, float]:
    keys = sorted({k for item in items for k in item})
    means = {k: round(sum(i[k] for i in items if k in i) / sum(k in i for i in items), 4) for k in keys}
    return {"n": len(items), **means}
