"""TGO (teacher-generated outputs): the teacher's rollouts through the batched graph, kept with their
token ids and environment mask so the cold start can distil on the correct ones."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from dgpo_agent.backends.base import SamplingParams
from dgpo_agent.errors import DGPOError
from dgpo_agent.rollout import AgentConfig
from dgpo_agent.evals.harness import rollout_records
from dgpo_agent.trajectories import read_rows


@dataclass
class TGOConfig:
    """How the teacher is sampled: ``samples_per_question`` rollouts for each of the first ``questions``
    training questions (None: all) at ``temperature`` (the paper samples at 1.0), each turn at most
    ``max_new_tokens``."""

    questions: int | None = None
    samples_per_question: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples_per_question < 1 or self.max_new_tokens < 1 or (self.questions is not None and self.questions < 1):
            raise DGPOError("tgo.questions, samples_per_question and max_new_tokens must be at least 1")
        if self.seed < 0:
            raise DGPOError(f"tgo.seed must be >= 0 (got {self.seed})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise DGPOError(f"tgo.temperature must be >= 0 and top_p in (0, 1] (got {self.temperature}, {self.top_p})")


def generate_tgo(teacher, retriever, records: list[dict], config: TGOConfig, agent: AgentConfig, path: Path) -> dict:
    """Roll the teacher out (resumably) into ``path`` and return the yield per data source."""
    sampling = SamplingParams(config.temperature, config.top_p, config.max_new_tokens, seed=config.seed)
    agent = dataclasses.replace(agent, sampling=sampling)
    samples = [
        {**record, "id": f"{record['id']}#{k}", "question_id": record["id"], "sample": k}
        for record in records[: config.questions]
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


def check_yield(report: dict[str, dict]) -> None:
    """Stop before the cold start when the teacher got nothing right, saying what usually causes it."""
    if report["all"]["correct"] == 0:
        raise DGPOError(
            f"the teacher got none of its {report['all']['samples']} sampled training rollouts right, so there is nothing "
            "to distil: a chat model that was only prompted needs `agent: {observations: user, examples: 2}` "
            "(docs/serving.md); otherwise train the teacher longer or name a stronger one (teacher.model)"
        )


def correct_rows(path: Path) -> Iterator[dict]:
    """The teacher's correct trajectories: what the cold start distils on."""
    return (row for row in read_rows(path) if row["scores"]["em"] == 1.0)
