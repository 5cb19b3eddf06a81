"""Pipeline settings: one dataclass, named presets, and YAML overrides.

The config is the public surface of ``dgpo-agent train``: a preset names a complete config, a YAML
file overrides any of its fields, and each stage fingerprints only the fields it reads, so changing
a late setting never re-runs an early stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgpo_agent.errors import DGPOError


@dataclass
class WorldSettings:
    seed: int = 0
    size: str = "default"


@dataclass
class StoreSettings:
    collection: str = "dgpo"
    embedder: str | None = None  # None: the packaged all-MiniLM-L6-v2
    batch_size: int = 256
    # HNSW index parameters (None: Chroma's 100 / 100 / 16, recall@3 0.995 against exact search on the
    # tiny world; 200 / 200 / 32 reached 0.9995 at +75% query time). Large corpora need larger values.
    ef_construction: int | None = None
    max_neighbors: int | None = None
    ef_search: int | None = None

    def hnsw(self) -> dict[str, int | None]:
        """The HNSW parameters as ``ChromaStore`` takes them (None: Chroma's default)."""
        return {"ef_construction": self.ef_construction, "max_neighbors": self.max_neighbors, "ef_search": self.ef_search}


@dataclass
class AgentSettings:
    max_turns: int = 4
    top_k: int = 3


@dataclass
class TokenizerSettings:
    vocab_size: int = 12288  # saturates near 10.4k on the default world: about one token per name word


@dataclass
class BaseSettings:
    """Base-model pretraining (language modelling on the passages plus the copy curriculum)."""

    student_steps: int = 1200
    teacher_steps: int = 800
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    copy_fraction: float = 0.3
    seed: int = 0


@dataclass
class TeacherSettings:
    """The teacher: SFT of the base teacher on the oracle's demonstrations, or ``model``, any HF
    checkpoint (a Search-R1 PPO model at real scale), used as is."""

    model: str | None = None
    steps: int = 3000  # at 2,000 the dev EM was still rising (0.60 at 1,300) and the loss still falling
    batch_size: int = 8
    lr: float = 1e-3
    lm_fraction: float = 0.2  # share of SFT examples drawn from the pretraining stream (keeps copying alive)
    seed: int = 0


@dataclass
class TGOSettings:
    """Teacher rollouts over the training questions; the correct ones are the cold start's data."""

    questions: int | None = 2000
    samples_per_question: int = 1
    temperature: float = 1.0
    max_new_tokens: int = 96
    seed: int = 0


@dataclass
class ColdStartSettings:
    """The student's cold start on TGO: ``kd`` (forward KL to the teacher, optional CE mix ``ce_weight``)
    or ``seqkd`` (plain SFT); ``baselines`` names further methods to train and evaluate beside it."""

    student: str | None = None  # an HF checkpoint instead of the base student
    method: str = "kd"
    baselines: list[str] = field(default_factory=list)
    # Copying unseen names into queries forms abruptly between ~800 and ~1,500 steps. Final dev EM (100
    # questions) of runs from one TGO: 0.28 at 1,200 steps, 0.51 at 1,800, 0.49 at 2,400 (bench/README.md,
    # cold start length). Without the lm_fraction stream it stalled at 0.17.
    steps: int = 1800
    batch_size: int = 8
    lr: float = 1e-3
    kd_lambda: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 1.0
    lm_fraction: float = 0.2  # share of examples from the base pretraining stream (keeps copying alive)
    eval_every: int = 300  # steps between dev-EM points of the curve (0: none)
    eval_questions: int = 100
    seed: int = 0


@dataclass
class RLSettings:
    """RL after the cold start, on the training questions through the batched graph (``training.rl``).

    ``dgpo``: PPO with a value model plus the teacher's term on wrong rollouts (the paper). ``ppo`` /
    ``grpo``: the same loop without a teacher. ``gkd``: on-policy distillation, the teacher's term on
    every rollout and no task reward. Each starts from the cold start's main method; a ``-from-base``
    suffix (``ppo-from-base``) starts it from the base student. Every step samples ``rollouts``
    trajectories: ``rollouts / group_size`` questions × ``group_size`` rollouts each, from a pool of
    ``questions`` training questions that TGO did not use (None: all of them), so a question comes
    back once the pool is spent.
    """

    method: str = "dgpo"
    baselines: list[str] = field(default_factory=list)
    steps: int = 30  # 0: no RL
    rollouts: int = 128
    group_size: int = 4
    questions: int | None = None
    lr: float = 1e-4
    critic_lr: float = 1e-4
    warmup_ratio: float = 0.285
    critic_warmup_steps: int = 0
    ppo_epochs: int = 1
    num_minibatches: int = 2
    beta: float = 0.001
    guidance: str = "reward"
    kl_on: str = "wrong"
    kl_estimator: str = "k1"
    temperature: float = 0.7
    max_new_tokens: int = 96
    save_every: int = 10
    eval_every: int = 10  # steps between dev-EM points (0: none)
    eval_questions: int = 100
    seed: int = 0


@dataclass
class EvalSettings:
    """Greedy test-split evaluation through the batched graph."""

    questions: int | None = None  # None: the whole split
    # The base student rambles to the token limit every turn, costing ~5x a trained model to score:
    # it is scored on the first 200 test questions (50 per data source), enough to show EM ~0.
    base_questions: int | None = 200
    max_new_tokens: int = 96


@dataclass
class DataSettings:
    """Real-scale data in Search-R1's format instead of the embedded world: question files (parquet or
    JSONL with ``question``, ``golden_answers``, ``data_source``) and a JSONL corpus to index."""

    train: str | None = None
    test: str | None = None
    corpus: str | None = None

    @property
    def external(self) -> bool:
        return any((self.train, self.test, self.corpus))


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
    tgo: TGOSettings = field(default_factory=TGOSettings)
    cold_start: ColdStartSettings = field(default_factory=ColdStartSettings)
    rl: RLSettings = field(default_factory=RLSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

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
        fingerprint hashes, and what a record of the settings compares by value."""
        return set_only({name: _plain(getattr(self, name)) for name in sections})


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def set_only(data: dict) -> dict:
    """The settings that are set: None means unset, so a new optional setting (None by default) leaves
    every existing run's fingerprints, and its cached stages, as they were."""
    return {k: set_only(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}


PRESETS: dict[str, dict[str, Any]] = {
    # The default: the shipped starting point, then TGO and the cold start on 2 CPU cores.
    "tiny": {},
    # Minutes, for CI: the default path (shipped starting point) with a few questions and steps.
    "smoke": {
        "tgo": {"questions": 64, "max_new_tokens": 64},
        "cold_start": {"steps": 20, "eval_every": 10, "eval_questions": 16, "baselines": ["seqkd"]},
        "rl": {"steps": 2, "rollouts": 8, "max_new_tokens": 48, "eval_every": 1, "eval_questions": 16, "baselines": ["grpo"]},
        "eval": {"questions": 60},
    },
    # GPU, real scale: the paper's models and Search-R1's data (download them first; see the README).
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
        # The reference recipe (dgpo-paper.md): 512 prompts x 1 rollout, mini-batch 256, 1000 steps.
        "rl": {"steps": 1000, "rollouts": 512, "temperature": 1.0, "lr": 1e-6, "critic_lr": 1e-5, "max_new_tokens": 500, "save_every": 50, "eval_every": 200, "eval_questions": 256},
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
    overrides = _merge(_merge(PRESETS[preset], _read_yaml(path) if path else {}), overrides or {})
    cfg = _build(PipelineConfig, {"preset": preset, "out": str(out or Path("runs") / preset), **overrides})
    if out is not None:
        cfg.out = str(out)
    return cfg


def _read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise DGPOError(f"config file {path} not found: pass an existing YAML file to --config")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise DGPOError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _build(cls: type, values: dict, where: str = "") -> Any:
    """Instantiate a (nested) config dataclass, rejecting unknown keys with the list of valid ones.
    ``where`` is the YAML path of ``values`` (``rl.``), so errors name the key the user wrote."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        keys = ", ".join(where + k for k in sorted(unknown))
        scope = f"in {where.rstrip('.')}" if where else "at the top level"
        raise DGPOError(f"unknown setting(s) {keys}: the valid ones {scope} are {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if sub and dataclasses.is_dataclass(sub()) and isinstance(value, dict):
            kwargs[name] = _build(type(sub()), value, f"{where}{name}.")
        else:
            kwargs[name] = as_number(where.rstrip("."), name, fields[name].default, value)
    return cls(**kwargs)


def as_number(section: str, name: str, default: Any, value: Any) -> Any:
    """A numeric field's value as a number: YAML 1.1 reads ``3e-4`` (no dot) as a string."""
    if not isinstance(value, str) or isinstance(default, bool) or not isinstance(default, int | float):
        return value
    try:
        return type(default)(value)
    except ValueError:
        key = f"{section}.{name}" if section else name
        raise DGPOError(f"{key} must be a number, not {value!r}") from None
