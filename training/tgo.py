"""TGO (teacher-generated outputs): the teacher's rollouts through the batched graph, kept with their
token ids and environment mask so the cold start can distil on the correct ones."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from dgpo_agent.backends.base import SamplingParams
from dgpo_agent.rollout import AgentConfig
from dgpo_agent.training.rollouts import read_rows, rollout_records


@dataclass
class TGOConfig:
    """How the teacher is sampled: ``samples_per_question`` rollouts per training question at
    ``temperature`` (the paper samples at 1.0), each turn at most ``max_new_tokens``."""

    samples_per_question: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    max_questions: int | None = None


def generate_tgo(teacher, retriever, records: list[dict], config: TGOConfig, agent: AgentConfig, path: Path) -> dict:
    """Roll the teacher out (resumably) into ``path`` and return the yield per data source."""
    sampling = SamplingParams(config.temperature, config.top_p, config.max_new_tokens, seed=config.seed)
    agent = AgentConfig(max_turns=agent.max_turns, top_k=agent.top_k, sampling=sampling)
    samples = [
        {**record, "id": f"{record['id']}#{k}", "question_id": record["id"], "sample": k}
        for record in records[: config.max_questions]
        for k in range(config.samples_per_question)
    ]
    rows = rollout_records(samples, teacher, retriever, agent, path, label="teacher outputs", tokens=True)
    return tgo_yield(rows)


def tgo_yield(rows: Iterable[dict]) -> dict[str, dict]:
    """Per data source (and ``all``): samples, correct samples, their share, and questions with at
    least one correct sample."""
    samples: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        samples[row["data_source"]].append(row)
        samples["all"].append(row)
    report = {}
    for source, group in sorted(samples.items()):
        correct = [r for r in group if r["scores"]["em"] == 1.0]
        questions = {r["question_id"] for r in group}
        report[source] = {
            "samples": len(group),
            "correct": len(correct),
            "yield": round(len(correct) / len(group), 4),
            "questions": len(questions),
            "questions_solved": len({r["question_id"] for r in correct}),
        }
    return report


def correct_rows(path: Path) -> Iterator[dict]:
    """The teacher's correct trajectories: what the cold start distils on."""
    return (row for row in read_rows(path) if row["scores"]["em"] == 1.0)
