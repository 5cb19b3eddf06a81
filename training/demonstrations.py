"""The oracle stage: expert demonstrations through the real graph logic and store.

The scripted oracle answers every split with the batched runner (real searches, real documents).
Its trajectories are the demonstrations a teacher is trained on, and its test EM is the ceiling any
model can reach in this world.
"""

from __future__ import annotations

import json
from pathlib import Path

from dgpo_agent.agent import output
from dgpo_agent.evals.scoring import aggregate, score
from dgpo_agent.rollout import AgentConfig, run_batch
from dgpo_agent.training.config import PipelineConfig

SPLITS = ("train", "dev", "test")
CHUNK = 256  # questions per batched run: one progress tick, one resumable append


def write_demonstrations(world: Path, store: Path, out: Path, cfg: PipelineConfig) -> dict:
    """Roll the oracle out over every split; write trajectories (JSONL) and metrics per data source."""
    from dgpo_agent.store import ChromaStore
    from dgpo_agent.world import OraclePolicy, load_questions

    policy, retriever = OraclePolicy(), ChromaStore(store, cfg.store.collection, must_exist=True)
    agent_cfg = AgentConfig(max_turns=cfg.agent.max_turns, top_k=cfg.agent.top_k)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for split in SPLITS:
        records = load_questions(world / f"{split}.jsonl")
        path = out / f"{split}.jsonl"
        rows = rollout_split(records, policy, retriever, agent_cfg, path, label=f"oracle {split}")
        metrics[split] = aggregate((r["data_source"], r["scores"]) for r in rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return {split: {"n": m["all"]["n"], "em": m["all"]["em"], "evidence_recall": m["all"].get("evidence_recall")} for split, m in metrics.items()}


def rollout_split(records: list[dict], policy, retriever, config: AgentConfig, path: Path, label: str) -> list[dict]:
    """Roll out ``records`` in chunks, appending scored trajectories to ``path``; resumes where it stopped."""
    from rich.progress import Progress

    done = _read_rows(path)
    todo = [r for r in records if r["id"] not in {row["id"] for row in done}]
    with Progress(transient=True) as progress, path.open("a") as sink:
        task = progress.add_task(label, total=len(records), completed=len(records) - len(todo))
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            states = run_batch([r["question"] for r in chunk], policy, retriever, config)
            for record, state in zip(chunk, states, strict=True):
                row = _row(record, state)
                sink.write(json.dumps(row) + "\n")
                done.append(row)
            sink.flush()
            progress.advance(task, len(chunk))
    order = {r["id"]: i for i, r in enumerate(records)}
    return sorted(done, key=lambda row: order[row["id"]])


def _row(record: dict, state) -> dict:
    result = output(state)
    return {
        **record,
        "answer": result["answer"],
        "steps": result["steps"],
        "segments": [{"role": s["role"], "text": s["text"]} for s in state["segments"]],
        "scores": score(result, record),
    }


def _read_rows(path: Path) -> list[dict]:
    """Rows already written; a line cut by an interruption is dropped and the file truncated to match."""
    if not path.is_file():
        return []
    rows, good = [], 0
    with path.open() as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line.encode())
    with path.open("r+b") as f:
        f.truncate(good)
    return rows
