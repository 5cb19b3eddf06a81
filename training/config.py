"""Pipeline settings: one dataclass per section, named presets, and the one YAML loader.

The config is the public surface of ``dgpo-agent train``: a preset names a complete config, a YAML
file overrides any of its fields, and each stage fingerprints only the sections it reads, so changing
a late setting never re-runs an early stage. Sections that configure a trainer are that trainer's
config (``rl`` an ``RLConfig``, ``tgo`` a ``TGOConfig``); presets override the trainers' defaults,
which are the paper's recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dgpo_agent.backends.base import SamplingParams
from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import EXAMPLES, OBSERVATIONS, ChatFormat
from dgpo_agent.rollout import AgentConfig
from dgpo_agent.smollm2 import NAME as SMOLLM2
from dgpo_agent.store.embeddings import check_device
from dgpo_agent.training.checks import at_least, fraction, one_of, positive, trackers
from dgpo_agent.training.rl_config import RLConfig, method_settings
from dgpo_agent.training.tgo import TGOConfig


@dataclass
class WorldSettings:
    seed: int = 0
    size: str = "default"

    def __post_init__(self) -> None:
        from dgpo_agent.world.kb import PRESETS as SIZES

        one_of("world.size", self.size, SIZES)
        at_least("world.seed", self.seed, 0)


@dataclass
class StoreSettings:
    """The Chroma store the corpus is indexed into. HNSW parameters left at None keep Chroma's defaults;
    larger values find the exact neighbours more often at some query time (bench/README.md, "Exact
    retrieval"). Changing a build parameter rebuilds the run's index."""

    collection: str = "dgpo"
    embedder: str | None = None  # None: the packaged all-MiniLM-L6-v2
    batch_size: int = 256
    device: str | None = None  # where passages and queries are embedded; None: cpu
    ef_construction: int | None = None
    max_neighbors: int | None = None
    ef_search: int | None = None

    def __post_init__(self) -> None:
        if not (3 <= len(self.collection) <= 512 and all(c.isalnum() or c in "._-" for c in self.collection)):
            raise DGPOError(f"store.collection must be 3-512 characters of letters, digits, . _ or - (got {self.collection!r})")
        at_least("store.batch_size", self.batch_size, 1)
        if self.device is not None:
            check_device(self.device)
        for name, value in self.hnsw().items():
            if value is not None:
                at_least(f"store.{name}", value, 1)

    def hnsw(self) -> dict[str, int | None]:
        """The HNSW parameters as ``ChromaStore`` takes them (None: Chroma's default)."""
        return {"ef_construction": self.ef_construction, "max_neighbors": self.max_neighbors, "ef_search": self.ef_search}


@dataclass
class AgentSettings:
    """The agent every stage runs: its turn and document budgets and its chat format
    (``protocol.ChatFormat``; unset, Search-R1's: observations inline, no worked examples)."""

    max_turns: int = 4
    top_k: int = 3
    observations: str | None = None
    examples: int | None = None

    def __post_init__(self) -> None:
        at_least("agent.max_turns", self.max_turns, 1)
        at_least("agent.top_k", self.top_k, 1)
        if self.observations is not None:
            one_of("agent.observations", self.observations, OBSERVATIONS)
        if self.examples is not None:
            one_of("agent.examples", self.examples, range(len(EXAMPLES) + 1))

    def format(self) -> ChatFormat:
        return ChatFormat(observations=self.observations or "inline", examples=self.examples or 0)

    def config(self, max_new_tokens: int | None = None) -> AgentConfig:
        """The agent as rollouts run it; with ``max_new_tokens``, greedy with that budget per turn (evaluation)."""
        sampling = SamplingParams() if max_new_tokens is None else SamplingParams(max_new_tokens=max_new_tokens)
        return AgentConfig(max_turns=self.max_turns, top_k=self.top_k, sampling=sampling, format=self.format())


@dataclass
class TokenizerSettings:
    vocab_size: int = 12288

    def __post_init__(self) -> None:
        at_least("tokenizer.vocab_size", self.vocab_size, 512)


@dataclass
class BaseSettings:
    """Base models: pretraining the world's (language modelling on the passages plus the copy
    curriculum), or a smaller student cut from a checkpoint: ``student_layers`` evenly spaced decoder
    layers of ``student_from`` (an HF checkpoint; the student keeps its vocabulary, so it can be
    distilled from a teacher of the same family)."""

    student_steps: int = 1200
    teacher_steps: int = 800
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    copy_fraction: float = 0.3
    seed: int = 0
    student_from: str | None = None
    student_layers: int | None = None

    def __post_init__(self) -> None:
        for name in ("student_steps", "teacher_steps", "batch_size", "seq_len"):
            at_least(f"base.{name}", getattr(self, name), 1)
        if self.student_layers is not None:
            at_least("base.student_layers", self.student_layers, 1)
            if not self.student_from:
                raise DGPOError("base.student_layers needs base.student_from: name the checkpoint to take the layers from")
        positive("base.lr", self.lr)
        at_least("base.seed", self.seed, 0)
        fraction("base.copy_fraction", self.copy_fraction)


@dataclass
class TrainerSettings:
    """What a supervised stage's ``Trainer`` runs with: ``steps`` optimiser steps of ``batch_size`` at
    ``lr`` on a ``scheduler`` after ``warmup_steps``, a checkpoint every ``save_steps`` (the last
    ``save_total_limit`` kept) and a log line every ``logging_steps``. ``micro_batch_size`` forwards
    each batch in length-sorted chunks (same loss, less padding: faster on CPU)."""

    steps: int = 1000
    batch_size: int = 8
    micro_batch_size: int | None = None
    lr: float = 1e-3
    scheduler: str = "cosine"
    warmup_steps: int = 20
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 10
    precision: str = "fp32"  # bf16: autocast on float32 master weights (GPU)
    seed: int = 0

    def __post_init__(self) -> None:
        one_of("precision", self.precision, ("fp32", "bf16"))
        one_of("scheduler", self.scheduler, ("cosine", "linear", "constant", "constant_with_warmup"))
        for name in ("steps", "batch_size", "save_steps", "save_total_limit", "logging_steps"):
            at_least(name, getattr(self, name), 1)
        if self.micro_batch_size is not None:
            at_least("micro_batch_size", self.micro_batch_size, 1)
        at_least("warmup_steps", self.warmup_steps, 0)
        at_least("seed", self.seed, 0)
        positive("lr", self.lr)


@dataclass
class TeacherSettings(TrainerSettings):
    """The teacher: SFT on the oracle stage's demonstrations (the world oracle's, or the evidence
    demonstrator's on a real corpus) of the base teacher or of ``start_from``, any HF checkpoint (a
    chat model with no protocol skills yet); or ``model``, any HF checkpoint (a Search-R1 PPO model
    at real scale), used as is. ``lm_fraction`` of the examples come from the pretraining stream,
    which keeps copying alive."""

    model: str | None = None
    start_from: str | None = None
    steps: int = 3000
    lm_fraction: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction("teacher.lm_fraction", self.lm_fraction, below_one=True)
        if self.model and self.start_from:
            raise DGPOError("set one of teacher.model (used as is) and teacher.start_from (fine-tuned on demonstrations), not both")


COLD_START_METHODS = ("kd", "seqkd")


@dataclass
class ColdStartSettings(TrainerSettings):
    """The student's cold start on TGO: ``kd`` (forward KL to the teacher, optional CE mix ``ce_weight``)
    or ``seqkd`` (plain SFT); ``baselines`` names further methods to train and evaluate beside it.
    Its dev-EM curve takes a point every ``eval_every`` steps on ``eval_questions`` dev questions."""

    student: str | None = None  # an HF checkpoint instead of the base student
    method: str = "kd"
    baselines: list[str] = field(default_factory=list)
    # Chosen on dev with the tiny preset's 20 RL steps, of the splits that fit the default run's 30
    # minutes: copying unseen names forms late, and RL adds more to a longer cold start
    # (bench/README.md, "The split that fits" and "A longer cold start, fewer RL steps").
    steps: int = 3400
    kd_lambda: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 1.0
    teacher_top_k: int | None = None  # KD from a table of the teacher's k likeliest tokens (None: its forward every step)
    lm_fraction: float = 0.2
    eval_every: int = 300
    eval_questions: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("kd_lambda", "ce_weight"):
            at_least(f"cold_start.{name}", getattr(self, name), 0)
        positive("cold_start.temperature", self.temperature)
        if self.teacher_top_k is not None:
            at_least("cold_start.teacher_top_k", self.teacher_top_k, 1)
        fraction("cold_start.lm_fraction", self.lm_fraction, below_one=True)
        at_least("cold_start.eval_every", self.eval_every, 0)
        at_least("cold_start.eval_questions", self.eval_questions, 1)
        one_of("cold_start.method", self.method, COLD_START_METHODS)
        for method in self.baselines:
            one_of("cold_start.baselines", method, COLD_START_METHODS)

    def methods(self) -> list[str]:
        """The main method and each baseline, once each, in that order."""
        return list(dict.fromkeys([self.method, *self.baselines]))


@dataclass
class RLStageConfig(RLConfig):
    """The ``rl`` section: the trainer's ``RLConfig`` plus which methods the pipeline trains.

    ``method`` (``dgpo``, ``ppo``, ``grpo`` or ``gkd``, see ``rl_config.RL_METHODS``) and each of
    ``baselines`` train from the cold start, or from the base student with a ``-from-base`` suffix.
    The main method trains with the ``algorithm`` and ``kl_on`` set here where it allows them (its own
    where unset; a value it does not allow is an error); baselines train as their methods define them.
    ``questions`` caps RL's pool of training questions (those TGO did not use; None: all of them), so
    a question comes back once the pool is spent. Dev-EM points take ``eval_questions`` questions.
    ``max_steps: 0`` skips RL.
    """

    method: str = "dgpo"
    baselines: list[str] = field(default_factory=list)
    questions: int | None = None
    eval_questions: int = 100
    # The settings that define a method (rl_config.RL_METHODS): None is the main method's own.
    algorithm: Literal["ppo", "grpo", "gkd"] | None = None
    kl_on: Literal["wrong", "all", "none"] | None = None

    def __post_init__(self) -> None:
        defining = method_settings(self.method, {"algorithm": self.algorithm, "kl_on": self.kl_on})
        self.algorithm, self.kl_on = defining["algorithm"], defining["kl_on"]
        super().__post_init__()
        if self.questions is not None:
            at_least("rl.questions", self.questions, 1)
        at_least("rl.eval_questions", self.eval_questions, 1)
        for method in self.baselines:  # each baseline's name and settings are checked now, not when it starts training
            self.for_method(method)

    def for_method(self, method: str, **changes: object) -> RLConfig:
        """``RLConfig.for_method``, except that the main method trains with the algorithm and ``kl_on``
        these settings chose for it; baselines always train as their methods define them."""
        if method == self.method:
            changes = {"algorithm": self.algorithm, "kl_on": self.kl_on, **changes}
        return super().for_method(method, **changes)

    def methods(self) -> list[str]:
        """The main method and each baseline, once each, in that order."""
        return list(dict.fromkeys([self.method, *self.baselines]))


@dataclass
class EvalSettings:
    """Greedy test-split evaluation through the batched graph. The base student rambles to the token
    limit every turn, so it is scored on ``base_questions`` only (enough to show its EM is ~0)."""

    questions: int | None = None  # None: the whole split
    base_questions: int | None = 200
    max_new_tokens: int = 96

    def __post_init__(self) -> None:
        for name in ("questions", "base_questions", "max_new_tokens"):
            if getattr(self, name) is not None:
                at_least(f"eval.{name}", getattr(self, name), 1)


@dataclass
class TrackingSettings:
    """Experiment trackers (accelerate's: tensorboard, wandb, trackio, ...) that the teacher's SFT, the
    cold start and RL report to beside their ``metrics.jsonl``. No stage fingerprints this section:
    turning a tracker on never re-runs a stage."""

    report_to: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        trackers("tracking.report_to", self.report_to)


DATA_SOURCES = ("world", "wikipedia", "files")


@dataclass
class DataSettings:
    """Where the run's corpus and questions come from (``source``):

    - ``world``: the generated world (the ``world`` section), the default;
    - ``wikipedia``: gensim's English Wikipedia sample with this project's questions
      (``dgpo_agent.wikipedia``; ``pip install '.[wikipedia]'``), ``articles`` of them when set;
    - ``files``: your own, in Search-R1's format: question files (parquet or JSONL with
      ``question``, ``golden_answers``, ``data_source``; optional ``evidence`` passage ids) and a
      wiki-18 JSONL corpus. Without ``dev`` the last ``dev_questions`` training questions (a tenth
      of them, at most 500, when unset) are held out as dev.

    Setting ``train``, ``test`` or ``corpus`` implies ``files``."""

    source: str | None = None  # None: files when a path is set, else world
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    corpus: str | None = None
    dev_questions: int | None = None
    articles: int | None = None  # wikipedia: only the first N articles and the questions about them

    def __post_init__(self) -> None:
        if self.source is not None:
            one_of("data.source", self.source, DATA_SOURCES)
        if self.articles is not None:
            at_least("data.articles", self.articles, 1)
            if self.kind != "wikipedia":
                raise DGPOError(f"data.articles picks articles of the Wikipedia sample: set data.source: wikipedia, or drop it for {self.kind}")
        paths = {k: v for k, v in self.files().items() if v}
        if paths and self.kind != "files":
            raise DGPOError(f"data.source {self.kind} takes no files ({', '.join(f'data.{k}' for k in paths)}): drop them or set data.source: files")
        if self.kind == "files" and (missing := [f"data.{k}" for k in ("train", "test", "corpus") if not paths.get(k)]):
            raise DGPOError(f"data.source files needs {', '.join(missing)}: name your question files and corpus")
        if self.dev_questions is not None:
            at_least("data.dev_questions", self.dev_questions, 1)

    @property
    def kind(self) -> str:
        """The data source: ``source``, or what the given paths imply."""
        return self.source or ("files" if any(self.files().values()) else "world")

    def files(self) -> dict[str, str | None]:
        return {"train": self.train, "dev": self.dev, "test": self.test, "corpus": self.corpus}

    def identities(self) -> dict[str, str]:
        """``size:mtime`` of each named file that exists: cheap for a corpus of many gigabytes."""
        stats = {k: Path(v).stat() for k, v in self.files().items() if v and Path(v).is_file()}
        return {k: f"{stat.st_size}:{stat.st_mtime_ns}" for k, stat in stats.items()}

    def missing_files(self) -> list[str]:
        """The named files that do not exist (``data.<key>=<path>``)."""
        return [f"data.{k}={v}" for k, v in self.files().items() if v and not Path(v).is_file()]


@dataclass
class PipelineConfig:
    preset: str = "tiny"
    out: str = "runs/tiny"
    # "shipped": start from the packaged tokenizer, base student and teacher when they match the world;
    # "scratch": train them here (what `dgpo-agent prepare` runs).
    starting_point: str = "shipped"
    world: WorldSettings = field(default_factory=WorldSettings)
    data: DataSettings = field(default_factory=DataSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    base: BaseSettings = field(default_factory=BaseSettings)
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    tgo: TGOConfig = field(default_factory=TGOConfig)
    cold_start: ColdStartSettings = field(default_factory=ColdStartSettings)
    rl: RLStageConfig = field(default_factory=RLStageConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    def __post_init__(self) -> None:
        one_of("starting_point", self.starting_point, ("shipped", "scratch"))
        if self.cold_start.student and self.base.student_from:
            raise DGPOError("set one of cold_start.student (used as is) and base.student_from (cut to base.student_layers), not both")
        if self.data.kind != "world":
            # Only the world has a base teacher and student to train: other data needs checkpoints.
            if not (self.teacher.model or self.teacher.start_from):
                raise DGPOError(
                    f"data.source {self.data.kind} needs a teacher: set teacher.model (a checkpoint used as is) or "
                    "teacher.start_from (a checkpoint fine-tuned on scripted demonstrations)"
                )
            if not (self.cold_start.student or self.base.student_from):
                raise DGPOError(
                    f"data.source {self.data.kind} needs a student: set cold_start.student (a checkpoint) or "
                    "base.student_from (with base.student_layers to cut it smaller)"
                )
        if self.base.student_from and self.on_world and not (self.teacher.model or self.teacher.start_from):
            raise DGPOError(
                "base.student_from needs a teacher with its vocabulary: set teacher.model or teacher.start_from (the world's teacher has its own)"
            )
        if self.teacher.start_from and self.agent.format() != ChatFormat():
            raise DGPOError(
                "teacher.start_from learns Search-R1's layout from its demonstrations: leave agent.observations and agent.examples unset"
            )

    @property
    def trains_teacher(self) -> bool:
        """Whether the run fine-tunes its teacher on demonstrations (from the world's base teacher or
        from ``teacher.start_from``)."""
        return not self.teacher.model and (self.teacher.start_from is not None or (self.on_world and self.starting_point == "scratch"))

    @property
    def on_world(self) -> bool:
        """Whether the run's data is the generated world (which has its own models and oracle)."""
        return self.data.kind == "world"

    def fingerprint(self, *sections: str, leave_out: tuple[str, ...] = ()) -> str:
        """A short hash of the named sections, so a stage re-runs only when its inputs change;
        ``leave_out`` names ``section.field`` settings of those sections that the hash ignores (a
        misspelt one is a KeyError, not a setting silently hashed)."""
        data = self.settings(*sections)
        for setting in leave_out:
            section, name = setting.split(".")
            del data[section][name]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def settings(self, *sections: str) -> dict:
        """The named sections as plain data, settings left unset (None) dropped: what a stage's
        fingerprint hashes, and what a record of the settings compares by value. Your data files
        count by size and modification time too, so a file replaced under the same name re-runs
        the stages that read it."""
        settings = set_only({name: _plain(getattr(self, name)) for name in sections})
        if "data" in settings and (files := self.data.identities()):
            settings["data"]["identities"] = files
        return settings


@dataclass
class RLRunFile:
    """What ``python -m dgpo_agent.training.rl --config`` reads: the policy and (for DGPO or GKD) the
    teacher checkpoints, the training questions (Search-R1 parquet or JSONL), the store and its
    collection, the agent's budgets and the ``RLConfig``."""

    model: str
    train_file: str
    store: str
    teacher: str | None = None
    collection: str = "dgpo"
    agent: AgentSettings = field(default_factory=AgentSettings)
    rl: RLConfig = field(default_factory=RLConfig)


def load_run_file(path: Path) -> RLRunFile:
    """A standalone RL run file, read and checked like a pipeline config."""
    return build(RLRunFile, read_yaml(path, "--config"))


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def set_only(data: dict) -> dict:
    """The settings that are set: None means unset, so a new optional setting (None by default) leaves
    every existing run's fingerprints, and its cached stages, as they were."""
    return {k: set_only(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}


_TINY: dict[str, Any] = {
    # The teacher sampled once at 1.0 over 2,000 training questions; RL's pool is the rest.
    "tgo": {"questions": 2000, "samples_per_question": 1, "max_new_tokens": 96},
    # RL at CPU scale, every setting chosen on dev questions (bench/README.md, rl_tune, "RL's pool of
    # questions" and "Questions per step"): each step's 64 questions are new ones, never a pool that
    # comes back, with 2 rollouts each (the least that lets GRPO form a group).
    # 20 steps, so that the longer cold start fits the 30 minutes; the policy warms up over 3 of them.
    "rl": {
        "max_steps": 20, "rollout_batch_size": 64, "group_size": 2,
        "learning_rate": 1e-4, "critic_learning_rate": 1e-4, "warmup_ratio": 0.15, "temperature": 0.7, "max_new_tokens": 96,
        "save_every": 10, "eval_every": 10,
    },
    # The teacher's top 64 tokens hold nearly all of its mass (bench/README.md, "Pipeline stages"), and
    # a table of them replaces its forward in every KD step; chunks of 2 cut the padding.
    "cold_start": {"eval_every": 850, "micro_batch_size": 2, "teacher_top_k": 64},
    # An HNSW graph wide enough that every search returns the exact nearest passages: at Chroma's
    # defaults some queries miss one, and which ones changes each time the index is built, so two runs
    # with one seed drew different rollouts (bench/README.md, "Exact retrieval").
    "store": {"ef_construction": 400, "max_neighbors": 32, "ef_search": 400},
}

# A real pretrained model on real Wikipedia on 2 CPU cores: SmolLM2-135M-Instruct, fine-tuned on the
# evidence demonstrator's trajectories, teaches a student cut to a third of its layers; budgets are
# small (docs/training.md, the real-cpu run).
_REAL_CPU: dict[str, Any] = {
    "data": {"source": "wikipedia"},
    "teacher": {
        "start_from": SMOLLM2, "steps": 30, "batch_size": 2, "lr": 5e-5, "warmup_steps": 3, "lm_fraction": 0.0,
        "save_steps": 30, "logging_steps": 5,
    },
    # Any cut of two thirds of the layers starts far from the teacher: the cold start repairs it.
    "base": {"student_from": SMOLLM2, "student_layers": 10},
    "tgo": {"questions": None, "samples_per_question": 2, "max_new_tokens": 64},
    "cold_start": {
        "steps": 80, "batch_size": 2, "lr": 2e-4, "warmup_steps": 4, "lm_fraction": 0.0, "eval_every": 0,
        "save_steps": 40, "logging_steps": 5,
    },
    # Rollouts at the tiny preset's 0.7: at 1.0 this student's rollouts are mostly malformed, and the
    # teacher's pull on them left more invalid actions on dev (bench/README.md, the real path on CPU).
    "rl": {
        "max_steps": 3, "rollout_batch_size": 4, "group_size": 2, "questions": 8, "learning_rate": 1e-5,
        "critic_learning_rate": 1e-5, "warmup_ratio": 0.0, "temperature": 0.7, "max_new_tokens": 64, "micro_batch_size": 4,
        "save_every": 3,
    },
    "eval": {"max_new_tokens": 64, "base_questions": 16},
}

PRESETS: dict[str, dict[str, Any]] = {
    # The default: the shipped starting point, then TGO, the cold start and RL on 2 CPU cores.
    "tiny": _TINY,
    # Minutes, for CI: the default path (shipped starting point) with a few questions and steps.
    "smoke": {
        **_TINY,
        "tgo": {**_TINY["tgo"], "questions": 64, "max_new_tokens": 64},
        "cold_start": {
            **_TINY["cold_start"], "steps": 20, "warmup_steps": 2, "eval_every": 10, "eval_questions": 16, "baselines": ["seqkd"],
        },
        "rl": {
            **_TINY["rl"], "max_steps": 2, "rollout_batch_size": 4, "group_size": 2, "max_new_tokens": 48, "eval_every": 1,
            "eval_questions": 16, "baselines": ["grpo"],
        },
        "eval": {"questions": 60},
    },
    "real-cpu": _REAL_CPU,
    # Minutes, for CI: real-cpu with a few questions and steps.
    "real-cpu-smoke": {
        **_REAL_CPU,
        "teacher": {**_REAL_CPU["teacher"], "steps": 12, "lr": 1e-4, "warmup_steps": 1, "save_steps": 12},
        "tgo": {**_REAL_CPU["tgo"], "questions": 8, "samples_per_question": 1, "max_new_tokens": 32},
        "cold_start": {**_REAL_CPU["cold_start"], "steps": 2, "warmup_steps": 0, "save_steps": 2},
        "rl": {**_REAL_CPU["rl"], "max_steps": 1, "rollout_batch_size": 2, "questions": 4, "max_new_tokens": 32, "save_every": 1},
        "data": {"source": "wikipedia", "articles": 12},
        "eval": {"max_new_tokens": 32, "questions": 4, "base_questions": 2},
        "agent": {"max_turns": 2},
    },
    # GPU, real scale: the paper's models and Search-R1's data (download them first; see the README).
    # RL keeps RLConfig's defaults, which are the reference recipe.
    "qwen": {
        "data": {
            "train": "data/nq_hotpotqa_train/train.parquet",
            "test": "data/nq_hotpotqa_train/test.parquet",
            "corpus": "data/wiki-18.jsonl",
        },
        "store": {"batch_size": 512},
        "teacher": {"model": "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-3b-em-ppo"},
        "tgo": {"questions": None, "samples_per_question": 1, "max_new_tokens": 500},
        "cold_start": {
            "student": "Qwen/Qwen2.5-0.5B-Instruct", "steps": 1000, "batch_size": 16, "lr": 1e-5, "eval_every": 0,
        },
        "rl": {"eval_every": 200, "eval_questions": 256},
        "eval": {"max_new_tokens": 500},
    },
}


def load_config(
    preset: str = "tiny", path: Path | None = None, out: Path | None = None, overrides: dict | None = None
) -> PipelineConfig:
    """The preset's config, overridden by a YAML file and then by ``overrides`` (the same nested
    mapping), with the run directory defaulting to runs/<preset>."""
    if preset not in PRESETS:
        raise DGPOError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    overrides = _merge(_merge(PRESETS[preset], read_yaml(path, "--config") if path else {}), overrides or {})
    cfg = build(PipelineConfig, {"preset": preset, "out": str(out or Path("runs") / preset), **overrides})
    if out is not None:
        cfg.out = str(out)
    return cfg


def read_yaml(path: Path, option: str) -> dict:
    """A YAML file of settings (a mapping), or a one-line error naming the ``option`` that passed it."""
    import yaml

    if not path.is_file():
        raise DGPOError(f"config file {path} not found: pass an existing YAML file to {option}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise DGPOError(f"config file {path} is not valid YAML{line}: fix it or pass another file to {option}") from None
    if not isinstance(data, dict):
        raise DGPOError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def build(cls: type, values: dict, where: str = "") -> Any:
    """Instantiate a (nested) config dataclass, rejecting unknown keys with the list of valid ones and
    naming a missing required one. ``where`` is the YAML path of ``values`` (``rl.``), so errors name
    the key the user wrote."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(values) - set(fields)
    if unknown:
        keys = ", ".join(where + k for k in sorted(unknown))
        scope = f"in {where.rstrip('.')}" if where else "at the top level"
        raise DGPOError(f"unknown setting(s) {keys}: the valid ones {scope} are {', '.join(fields)}")
    required = [where + n for n, f in fields.items() if n not in values and f.default is f.default_factory is dataclasses.MISSING]
    if required:
        raise DGPOError(f"missing setting(s) {', '.join(required)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise DGPOError(f"{where}{name} must be a mapping of settings, not {value!r}")
            kwargs[name] = build(kind, value, f"{where}{name}.")
        else:
            kwargs[name] = check_type(f"{where}{name}", as_number(where.rstrip("."), name, fields[name].default, value), kind)
    return cls(**kwargs)


def check_type(key: str, value: Any, kind: Any) -> Any:
    """``value`` if it is of the annotated type (int, float, str, bool, a list of str, a Literal, or any
    of these or None); a one-line error naming the key otherwise. An int is a float; a bool is neither."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return check_type(key, value, option)
            except DGPOError:
                continue
        raise DGPOError(f"{key} must be {' or '.join(_type_name(a) for a in args)}, not {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise DGPOError(f"{key} must be one of {', '.join(map(str, args))}, not {value!r}")
    if origin is list:
        if isinstance(value, list) and all(isinstance(v, args[0]) for v in value):
            return value
        raise DGPOError(f"{key} must be a list of {_type_name(args[0], plural=True)}, not {value!r}")
    if kind is type(None) and value is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind in (int, float) and isinstance(value, kind) and not isinstance(value, bool):
        if kind is float and not math.isfinite(value):
            raise DGPOError(f"{key} must be a finite number, not {value!r}")
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise DGPOError(f"{key} must be {_type_name(kind)}, not {value!r}")


def _type_name(kind: Any, plural: bool = False) -> str:
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"), bool: ("true or false", "booleans")}
    return "null" if kind is type(None) else names.get(kind, (str(kind), str(kind)))[plural]


def as_number(section: str, name: str, default: Any, value: Any) -> Any:
    """A numeric field's value as a number: YAML 1.1 reads ``3e-4`` (no dot) as a string."""
    if not isinstance(value, str) or isinstance(default, bool) or not isinstance(default, int | float):
        return value
    try:
        return type(default)(value)
    except ValueError:
        key = f"{section}.{name}" if section else name
        raise DGPOError(f"{key} must be a number, not {value!r}") from None
