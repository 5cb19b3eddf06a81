"""A pipeline run: its folder layout (``RunDir``, the one place a run's paths are spelled) and what its
stages share (``Run``: the config, and the store, questions, corpus and tokenizers, each opened once).

    run/config.json                     the settings the last ``dgpo-agent train`` ran with
    run/world/                          the data (a generated world, the Wikipedia sample or your files):
                                        corpus, questions per split, chroma store (``WorldDir``)
    run/oracle/{split}.jsonl            the scripted expert's trajectories, and its metrics.json
    run/tokenizer/                      the world tokenizer
    run/base/{student,teacher}/         base models (language modelling + copy curriculum, or a cut checkpoint)
    run/teacher/                        the teacher
    run/tgo/train.jsonl                 the teacher's rollouts with token ids and env mask
    run/cold_start/<method>/            the cold-started student(s), with curve.jsonl
    run/rl/<method>/                    RL runs: metrics.jsonl, checkpoints/, final/ (the policy)
    run/<model dir>/test.jsonl          each model's test trajectories (+ test.metrics.json)
    run/arc/                            the ARC report of every model
    run/report.md, run/curves.png       the run's report card and training curves
    run/.stages/<stage>.json            each finished stage's fingerprint, time and summary
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgpo_agent.smollm2 import resolve  # a packaged model's name → its converted folder
from dgpo_agent.world import WorldDir

if TYPE_CHECKING:
    from dgpo_agent.training.config import PipelineConfig

TEST_TRAJECTORIES = "test.jsonl"  # in every tested model's folder, beside test.metrics.json
FINAL = "final"  # the policy an RL run ends with, inside its folder


@dataclass(frozen=True)
class RunDir:
    """Every path of a run folder."""

    root: Path

    @property
    def world(self) -> WorldDir:
        return WorldDir(self.root / "world")

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def oracle(self) -> Path:
        return self.root / "oracle"

    def oracle_split(self, split: str) -> Path:
        return self.oracle / f"{split}.jsonl"

    @property
    def oracle_metrics(self) -> Path:
        return self.oracle / "metrics.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def base(self, role: str) -> Path:
        """``role`` is student or teacher."""
        return self.root / "base" / role

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def tgo(self) -> Path:
        return self.root / "tgo" / "train.jsonl"

    def cold_start(self, method: str) -> Path:
        return self.root / "cold_start" / method

    def rl(self, method: str) -> Path:
        return self.root / "rl" / method

    def policy(self, method: str) -> Path:
        """The policy RL ``method`` ended with."""
        return self.rl(method) / FINAL

    @property
    def arc(self) -> Path:
        return self.root / "arc"

    def test_trajectories(self, model: Path) -> Path:
        return model / TEST_TRAJECTORIES

    @property
    def stages(self) -> Path:
        """The stage markers' folder."""
        return self.root / ".stages"

    def marker(self, stage: str) -> Path:
        """A finished stage's record: fingerprint, seconds, summary."""
        return self.stages / f"{stage}.json"

    def markers(self) -> list[Path]:
        """Every finished stage's record."""
        return sorted(self.stages.glob(self.marker("*").name))

    def started(self, stage: str) -> Path:
        """The fingerprint a stage was started with (to resume it, or to clear it when it changed)."""
        return self.stages / f"{stage}.started"

    def outputs(self, stage: str) -> tuple[Path, ...]:
        """The folders a stage writes, cleared when it starts over with other settings."""
        folders = {
            "world": (self.world.root,), "oracle": (self.oracle,), "tokenizer": (self.tokenizer,),
            "base": (self.root / "base",), "teacher": (self.teacher,), "tgo": (self.tgo.parent,),
            "cold-start": (self.root / "cold_start",), "rl": (self.root / "rl",), "results": (self.arc,),
        }
        return folders.get(stage, ())

    def cold_starts(self) -> list[Path]:
        return sorted(p for p in (self.root / "cold_start").glob("*") if p.is_dir())

    def rl_runs(self) -> list[Path]:
        return sorted(p for p in (self.root / "rl").glob("*") if p.is_dir())


@dataclass
class Run:
    """A run's config and folder, with what several stages read opened once and kept."""

    cfg: PipelineConfig
    dir: RunDir = field(init=False)
    _splits: dict[str, list[dict]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.dir = RunDir(Path(self.cfg.out))

    @cached_property
    def store(self) -> Any:
        """The run's passage store (after the index stage has built it)."""
        from dgpo_agent.store import ChromaStore

        return ChromaStore(self.dir.world.store, self.cfg.store.collection, must_exist=True, device=self.cfg.store.device or "cpu")

    def questions(self, split: str, n: int | None = None) -> list[dict]:
        """The first ``n`` question records of ``split`` (all when None), read once."""
        if split not in self._splits:
            from dgpo_agent.world import load_questions

            self._splits[split] = load_questions(self.dir.world.questions(split))
        return self._splits[split][:n]

    @property
    def corpus_file(self) -> Path:
        """The passages to index: your corpus file as it is (never copied), else the run's."""
        return Path(self.cfg.data.corpus) if self.cfg.data.kind == "files" else self.dir.world.corpus

    @property
    def test_file(self) -> Path:
        """The test questions as reports name them: your file, else the run's split."""
        return Path(self.cfg.data.test) if self.cfg.data.kind == "files" else self.dir.world.questions("test")

    @cached_property
    def corpus(self) -> list[dict]:
        from dgpo_agent.store import read_corpus

        return list(read_corpus(self.corpus_file))

    @cached_property
    def tokenizer(self) -> Any:
        """The world tokenizer."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.dir.tokenizer)

    @cached_property
    def student_tokenizer(self) -> Any:
        """The student's tokenizer: its checkpoint's own (a named or cut one), or the world tokenizer."""
        if self.cfg.cold_start.student or self.cfg.base.student_from:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.base_student)
        return self.tokenizer

    @property
    def teacher(self) -> str | Path:
        """The teacher checkpoint: a named one, or the run's."""
        return resolve(self.cfg.teacher.model) if self.cfg.teacher.model else self.dir.teacher

    @property
    def base_student(self) -> str | Path:
        """Where the student starts: a named checkpoint, or the run's base student."""
        return resolve(self.cfg.cold_start.student) if self.cfg.cold_start.student else self.dir.base("student")
