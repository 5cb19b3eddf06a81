"""Greedy EM of a model through the batched graph, per ``data_source``: the number each model stage
reports, and the points of the cold start's EM curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dgpo_agent.backends.base import SamplingParams
from dgpo_agent.evals.scoring import aggregate
from dgpo_agent.rollout import AgentConfig
from dgpo_agent.training.rollouts import rollout_records

SUMMARY_KEYS = ("n", "em", "f1", "evidence_recall", "answered", "searches")


def greedy_config(max_turns: int, top_k: int, max_new_tokens: int) -> AgentConfig:
    return AgentConfig(max_turns=max_turns, top_k=top_k, sampling=SamplingParams(max_new_tokens=max_new_tokens))


def evaluate_policy(policy: Any, records: list[dict], retriever: Any, config: AgentConfig, path: Path, label: str) -> dict:
    """Roll ``records`` out greedily (trajectories kept in ``path``, resumable) and write the metrics
    per data source beside it as ``<path>.metrics.json``."""
    rows = rollout_records(records, policy, retriever, config, path, label=label)
    metrics = aggregate((r["data_source"], r["scores"]) for r in rows)
    summary = {source: {k: m[k] for k in SUMMARY_KEYS if k in m} for source, m in metrics.items()}
    path.with_suffix(".metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def quick_em(policy: Any, records: list[dict], retriever: Any, config: AgentConfig) -> dict:
    """EM and answered rate over ``records`` without writing trajectories (for training curves)."""
    from dgpo_agent.agent import output
    from dgpo_agent.evals.scoring import score
    from dgpo_agent.rollout import run_batch

    states = run_batch([r["question"] for r in records], policy, retriever, config)
    overall = aggregate((r["data_source"], score(output(state), r)) for state, r in zip(states, records, strict=True))["all"]
    return {k: overall[k] for k in ("em", "answered")}
