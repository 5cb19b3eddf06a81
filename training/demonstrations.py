"""The oracle stage: expert demonstrations through the real graph logic and store.

The scripted oracle answers the world's questions with the batched runner (real searches, real
documents). Its training trajectories are the demonstrations a teacher is trained on, so they are
rolled out only when the run trains its teacher; its dev and test EM are the ceiling any model can
reach in this world.
"""

from __future__ import annotations

import json

from dgpo_agent.evals.scoring import aggregate
from dgpo_agent.training.config import PipelineConfig
from dgpo_agent.evals.harness import rollout_records
from dgpo_agent.training.run import Run

SPLITS = ("train", "dev", "test")


def demonstration_splits(cfg: PipelineConfig) -> tuple[str, ...]:
    """Every split when the run trains its teacher (from the training demonstrations); else dev and test."""
    trains_teacher = cfg.starting_point == "scratch" and not cfg.teacher.model
    return SPLITS if trains_teacher else SPLITS[1:]


def write_demonstrations(run: Run) -> dict:
    """Roll the oracle out over the splits the run needs; write trajectories (JSONL) and metrics per
    data source."""
    from dgpo_agent.world import OraclePolicy

    cfg = run.cfg
    agent_cfg = cfg.agent.config()
    run.dir.oracle.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for split in demonstration_splits(cfg):
        rows = rollout_records(run.questions(split), OraclePolicy(), run.store, agent_cfg, run.dir.oracle_split(split), label=f"oracle {split}")
        metrics[split] = aggregate((r["data_source"], r["scores"]) for r in rows)
    run.dir.oracle_metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return {split: {"n": m["all"]["n"], "em": m["all"]["em"], "evidence_recall": m["all"].get("evidence_recall")} for split, m in metrics.items()}
