"""Trajectory rows written to JSONL in resumable chunks: the oracle's demonstrations, the teacher's
outputs (TGO) and the evaluation harness's trajectories all go through here. Below both training
and evaluation: scoring the rows is the caller's (``evals.harness.rollout_records``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from dgpo_agent.agent import output
from dgpo_agent.rollout import token_trajectory
from dgpo_agent.state import AgentState

CHUNK = 256  # questions per batched run: one progress tick, one resumable append


def append_rows(
    records: list[dict], path: Path, label: str, run: Callable[[list[dict]], list[dict]], chunk: int = CHUNK
) -> list[dict]:
    """Append ``run(chunk)``'s rows (one per record, with its ``id``) to ``path``, ``chunk`` records at
    a time, skipping ids already written; returns every row for ``records``, in their order."""
    from rich.progress import Progress

    done = read_rows(path)
    written = {row["id"] for row in done}
    todo = [r for r in records if r["id"] not in written]
    path.parent.mkdir(parents=True, exist_ok=True)
    with Progress(transient=True) as progress, path.open("a") as sink:
        task = progress.add_task(label, total=len(records), completed=len(records) - len(todo))
        for start in range(0, len(todo), chunk):
            rows = run(todo[start : start + chunk])
            for row in rows:
                sink.write(json.dumps(row) + "\n")
            done += rows
            sink.flush()
            progress.advance(task, len(rows))
    order = {r["id"]: i for i, r in enumerate(records)}
    return sorted((row for row in done if row["id"] in order), key=lambda row: order[row["id"]])


def trajectory_row(record: dict, state: AgentState, tokens: bool = False) -> dict:
    """The question record with the agent's answer, steps and segments (text); with ``tokens`` also the
    sampled token ids, the environment mask and the log-probs (for training)."""
    result = output(state)
    row = {
        **record,
        "answer": result["answer"],
        "steps": result["steps"],
        "segments": [{"role": s["role"], "text": s["text"]} for s in state["segments"]],
    }
    if tokens:
        traj = token_trajectory(state)
        row.update(prompt_ids=traj.prompt_ids, response_ids=traj.response_ids, env_mask=traj.env_mask, logprobs=traj.logprobs)
    return row


def read_rows(path: Path) -> list[dict]:
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
