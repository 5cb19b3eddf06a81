"""The oracle stage: expert demonstrations through the real graph logic and store.

On the world the scripted oracle answers the questions with the batched runner (real searches, real
documents). Its training trajectories are the demonstrations a teacher is trained on, so they are
rolled out only when the run trains its teacher; its dev and test EM are the ceiling any model can
reach in this world. On any other data the evidence demonstrator (``scripted.EvidencePolicy``), which
is given the gold answers and so is no ceiling, rolls out the training questions only.
"""

from __future__ import annotations

import json

from dgpo_agent.evals.scoring import aggregate
from dgpo_agent.training.config import PipelineConfig
from dgpo_agent.evals.harness import rollout_records
from dgpo_agent.training.run import Run

SPLITS = ("train", "dev", "test")


def demonstration_splits(cfg: PipelineConfig) -> tuple[str, ...]:
    """On the world: every split when the run trains its teacher, else dev and test (the ceiling).
    Elsewhere: the training split, for the teacher."""
    if not cfg.on_world:
        return SPLITS[:1]
    return SPLITS if cfg.trains_teacher else SPLITS[1:]


def write_demonstrations(run: Run) -> dict:
    """Roll the oracle out over the splits the run needs; write trajectories (JSONL) and metrics per
    data source."""
    from dgpo_agent.scripted import EvidencePolicy
    from dgpo_agent.world import OraclePolicy

    cfg = run.cfg
    agent_cfg = cfg.agent.config()
    run.dir.oracle.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for split in demonstration_splits(cfg):
        records = run.questions(split)
        policy = OraclePolicy() if cfg.on_world else EvidencePolicy(records)
        rows = rollout_records(records, policy, run.store, agent_cfg, run.dir.oracle_split(split), label=f"demonstrations {split}")
        metrics[split] = aggregate((r["data_source"], r["scores"]) for r in rows)
    run.dir.oracle_metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return {split: {"n": m["all"]["n"], "em": m["all"]["em"], "evidence_recall": m["all"].get("evidence_recall")} for split, m in metrics.items()}
