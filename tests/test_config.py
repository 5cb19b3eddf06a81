"""Settings are checked before anything acts on them: a config with a wrong type, an unknown key or an
out-of-range value is refused with one line naming the key, and an existing run is left as it was."""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dgpo_agent.cli import app
from dgpo_agent.errors import DGPOError
from dgpo_agent.training.config import PipelineConfig, load_config

SECTIONS = {f.name: typing.get_type_hints(PipelineConfig)[f.name] for f in dataclasses.fields(PipelineConfig) if dataclasses.is_dataclass(typing.get_type_hints(PipelineConfig)[f.name])}
# Values of the wrong type for a field of each annotated type.
WRONG_TYPE = {
    int: ["twelve", 1.5, [1, 2], {"a": 1}, True],
    float: ["fast", [0.1], {"a": 1}, float("nan"), float("inf"), False],
    str: [5, 1.5, ["a"], {"a": 1}, True],
    bool: ["maybe", 2, [True]],
}
# Values of the right type that no run may take.
OUT_OF_RANGE = [
    ("world", "size", "bogus"), ("world", "seed", -1), ("store", "collection", "x"), ("store", "batch_size", 0),
    ("store", "ef_search", -5), ("agent", "max_turns", 0), ("agent", "top_k", -3), ("tokenizer", "vocab_size", 10),
    ("base", "student_steps", 0), ("base", "copy_fraction", 1.5), ("teacher", "steps", 0), ("teacher", "lr", -1.0),
    ("teacher", "precision", "fp8"), ("tgo", "samples_per_question", 0), ("tgo", "top_p", 0.0), ("tgo", "questions", 0),
    ("cold_start", "lm_fraction", 1.0), ("cold_start", "warmup_steps", -1), ("cold_start", "scheduler", "sawtooth"),
    ("rl", "method", "reinforce"), ("rl", "baselines", ["dgpo", "sft"]), ("rl", "max_steps", -1), ("rl", "group_size", 0),
    ("rl", "top_p", 2.0), ("rl", "guidance", "prompt"), ("rl", "kl_on", "some"), ("rl", "temperature", 0.0),
    ("rl", "warmup_ratio", 3.0), ("rl", "lr_scheduler_type", "linear"), ("rl", "kl_on", "none"), ("rl", "algorithm", "gkd"), ("eval", "questions", 0), ("eval", "max_new_tokens", -1),
    ("agent", "observations", "system"), ("agent", "examples", 3), ("store", "device", "tpu"),
    ("cold_start", "method", "sft"), ("cold_start", "baselines", ["gkd"]),
    ("data", "source", "web"), ("data", "dev_questions", 0), ("base", "student_layers", 0),
    ("cold_start", "micro_batch_size", 0), ("cold_start", "teacher_top_k", 0), ("teacher", "micro_batch_size", -2),
]


def field_type(section: str, name: str) -> type:
    """The plain type behind a field's annotation (``int | None`` → int)."""
    kind = typing.get_type_hints(SECTIONS[section])[name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    return typing.get_origin(base) or base


@st.composite
def bad_entries(draw):
    """One (section, key, value) that no config may hold: a wrong type, an unknown key or an out-of-range value."""
    kind = draw(st.sampled_from(["type", "unknown", "range"]))
    if kind == "range":
        return draw(st.sampled_from(OUT_OF_RANGE))
    section = draw(st.sampled_from(sorted(SECTIONS)))
    if kind == "unknown":
        return section, draw(st.sampled_from(["lr_typo", "max_turn", "stepz", "colour"])), draw(st.integers())
    names = [f.name for f in dataclasses.fields(SECTIONS[section]) if field_type(section, f.name) in WRONG_TYPE]
    name = draw(st.sampled_from(names))
    return section, name, draw(st.sampled_from(WRONG_TYPE[field_type(section, name)]))


@st.composite
def bad_documents(draw) -> dict:
    """A config document holding at least one bad entry, sometimes among valid ones, or a section that is
    not a mapping."""
    doc: dict = {}
    if draw(st.booleans()):
        doc["agent"] = {"top_k": 3}
        doc["rl"] = {"max_steps": 2}
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(sorted(SECTIONS)))] = draw(st.sampled_from([5, "text", [1, 2]]))
        return doc
    for section, name, value in draw(st.lists(bad_entries(), min_size=1, max_size=3)):
        doc.setdefault(section, {})[name] = value
    return doc


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """A run folder as a finished run leaves it (contents stand in for the real files)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    for name in ("world/corpus.jsonl", "world/chroma/chroma.sqlite3", "tgo/train.jsonl", "cold_start/kd/model.safetensors",
                 "rl/dgpo/final/model.safetensors", ".stages/world.json", "config.json", "report.md"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    return run


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=bad_documents())
def test_no_bad_config_touches_an_existing_run(existing_run, tmp_path_factory, doc):
    before = snapshot(existing_run)
    path = tmp_path_factory.getbasetemp() / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--out", str(existing_run)])
    assert isinstance(result.exception, DGPOError), (doc, result.output)
    assert "\n" not in str(result.exception)
    assert snapshot(existing_run) == before


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"world": {"size": "bogus"}}, "world.size must be one of default, small (got 'bogus')"),
        ({"world": {"seed": [1, 2]}}, "world.seed must be an integer, not [1, 2]"),
        ({"world": {"seed": 1.5}}, "world.seed must be an integer, not 1.5"),
        ({"rl": {"baselines": "ppo"}}, "rl.baselines must be a list of strings, not 'ppo'"),
        ({"rl": {"lr": 1e-4}}, "unknown setting(s) rl.lr: the valid ones in rl are"),
        ({"store": 5}, "store must be a mapping of settings, not 5"),
        ({"agent": {"observations": "system"}}, "agent.observations must be one of inline, user (got 'system')"),
        ({"tracking": {"report_to": ["tensorbored"]}}, "tracking.report_to must be one of tensorboard, wandb"),
        ({"tracking": {"report_to": ["aim"]}}, "tracking.report_to names aim, which is not installed: pip install aim"),
        # Data sources, and the models that other data needs.
        ({"data": {"source": "files", "train": "q.jsonl"}}, "data.source files needs data.test, data.corpus: name your question files"),
        ({"data": {"source": "wikipedia", "corpus": "c.jsonl"}}, "data.source wikipedia takes no files (data.corpus)"),
        ({"data": {"source": "wikipedia"}}, "data.source wikipedia needs a teacher: set teacher.model"),
        ({"data": {"source": "wikipedia"}, "teacher": {"model": "t"}}, "data.source wikipedia needs a student: set cold_start.student"),
        ({"teacher": {"model": "t", "start_from": "s"}}, "set one of teacher.model (used as is) and teacher.start_from"),
        ({"base": {"student_layers": 4}}, "base.student_layers needs base.student_from"),
        ({"base": {"student_from": "s"}}, "base.student_from needs a teacher with its vocabulary"),
        ({"cold_start": {"student": "a"}, "base": {"student_from": "b"}, "teacher": {"model": "t"}}, "set one of cold_start.student"),
        ({"teacher": {"start_from": "s"}, "agent": {"examples": 2}}, "teacher.start_from learns Search-R1's layout"),
        # A setting that defines a method, set to what that method does not train.
        ({"rl": {"method": "ppo", "kl_on": "all"}}, "rl.kl_on: all is not how ppo trains (it takes kl_on none)"),
        ({"rl": {"method": "gkd", "algorithm": "ppo"}}, "rl.algorithm: ppo is not how gkd trains (it takes algorithm gkd)"),
        ({"rl": {"baselines": ["grpo"], "group_size": 1}}, "grpo needs group_size >= 2"),
        # A rollout engine this machine cannot run.
        ({"rl": {"rollout_engine": "vllm"}}, "vLLM is not installed: pip install 'dgpo-agent[vllm]' (needs a CUDA GPU)"),
        ({"rl": {"vllm_gpu_memory_utilization": 1.0}}, "vllm_gpu_memory_utilization must be in (0, 1): training shares the GPU"),
        ({"rl": {"candidate_prompts": 32}}, "candidate_prompts (32) must be at least rollout_batch_size (64)"),
    ],
)
def test_a_bad_setting_is_named_with_the_fix(doc, message):
    with pytest.raises(DGPOError) as err:
        load_config("tiny", overrides=doc)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("setting, value", [("rollout_engine", "transformers"), ("candidate_prompts", 128)])
def test_the_later_rl_settings_leave_existing_runs_fingerprints_alone(setting, value):
    """Left unset they are not hashed, so a finished run does not re-run its RL stage on upgrading;
    chosen, each re-runs it (the engine draws other samples; candidates train on other questions)."""
    plain = load_config("tiny")
    assert not {"rollout_engine", "vllm_gpu_memory_utilization", "candidate_prompts"} & set(plain.settings("rl")["rl"])
    chosen = load_config("tiny", overrides={"rl": {setting: value}})
    assert getattr(chosen.rl, setting) == value and chosen.fingerprint("rl") != plain.fingerprint("rl")


def test_every_stage_runs_the_agent_the_config_names():
    """One place builds the agent's config: a chat format set in ``agent`` reaches rollouts and
    evaluation alike, and leaving it unset keeps Search-R1's and every existing run's fingerprint."""
    from dgpo_agent.protocol import ChatFormat

    chat = load_config("tiny", overrides={"agent": {"observations": "user", "examples": 2}})
    assert chat.agent.config().format == chat.agent.config(96).format == ChatFormat("user", 2)
    assert chat.agent.config(96).sampling.max_new_tokens == 96 and chat.agent.config(96).sampling.greedy
    plain = load_config("tiny")
    assert plain.agent.config().format == ChatFormat()
    assert plain.fingerprint("agent") == load_config("tiny", overrides={"agent": {"max_turns": 4}}).fingerprint("agent")
    assert plain.fingerprint("agent") != chat.fingerprint("agent")


@pytest.mark.parametrize(
    "rl, trained",
    [
        ({}, {"dgpo": ("ppo", "wrong")}),
        ({"algorithm": "grpo"}, {"dgpo": ("grpo", "wrong")}),
        ({"method": "gkd"}, {"gkd": ("gkd", "all")}),
        ({"method": "gkd", "kl_on": "wrong"}, {"gkd": ("gkd", "wrong")}),
        (
            {"kl_on": "all", "baselines": ["ppo", "grpo", "gkd", "dgpo-from-base"]},
            {"dgpo": ("ppo", "all"), "ppo": ("ppo", "none"), "grpo": ("grpo", "none"), "gkd": ("gkd", "all"), "dgpo-from-base": ("ppo", "wrong")},
        ),
    ],
)
def test_the_main_method_trains_the_settings_it_is_given_and_baselines_their_own(rl, trained):
    """A setting the rl section gives its method is trained, never silently replaced by the method's
    own (GKD on wrong rollouts once ran on every rollout); baselines train as their methods define them."""
    cfg = load_config("tiny", overrides={"rl": {**rl, "group_size": 2}})
    assert {m: (cfg.rl.for_method(m).algorithm, cfg.rl.for_method(m).kl_on) for m in cfg.rl.methods()} == trained
