"""Greedy test metrics of a model through the ARC harness, per ``data_source``: the numbers every
model stage reports, and the points of the cold start's and RL's dev-EM curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dgpo_agent.evals.scoring import aggregate
from dgpo_agent.rollout import AgentConfig

SUMMARY_KEYS = ("n", "em", "f1", "hit", "invalid", "evidence_recall", "answered", "searches")
METRICS_SUFFIX = ".metrics.json"  # beside a trajectory file: every metric per data source


def evaluate_policy(
    policy: Any, records: list[dict], retriever: Any, config: AgentConfig, path: Path, label: str, made_by: dict | None = None
) -> dict:
    """Roll ``records`` out through the ARC harness (trajectories and evidence probes kept in
    ``path``, resumable by whatever ``made_by`` names), write every metric per data source to
    ``<path>.metrics.json`` (what the run's ARC report reads) and return the headline metrics per
    data source."""
    from dgpo_agent.evals.harness import EvalConfig, evaluate, metrics

    rows = evaluate(records, policy, retriever, EvalConfig(config), path, label=label, made_by=made_by)
    full = metrics(rows)
    path.with_suffix(METRICS_SUFFIX).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return headline(full)


def headline(full: dict[str, dict]) -> dict[str, dict]:
    """The metrics every stage summary reports, per data source, from the harness's full metrics."""
    return {source: {k: m[k] for k in SUMMARY_KEYS if k in m} for source, m in full.items()}


def quick_em(policy: Any, records: list[dict], retriever: Any, config: AgentConfig) -> dict:
    """EM and answered rate over ``records`` without writing trajectories (for training curves)."""
    from dgpo_agent.agent import output
    from dgpo_agent.evals.scoring import score
    from dgpo_agent.rollout import run_batch

    states = run_batch([r["question"] for r in records], policy, retriever, config)
    overall = aggregate((r["data_source"], score(output(state), r)) for state, r in zip(states, records, strict=True))["all"]
    return {k: overall[k] for k in ("em", "answered")}
