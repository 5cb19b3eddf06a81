"""The shipped starting point: the world tokenizer, the base student and the teacher for the default
world, packaged with dgpo-agent like the paper's given teacher checkpoint.

Preparing them takes longer than the default run may, so ``dgpo-agent prepare`` trains them here once
(the pipeline with ``starting_point: scratch`` up to the teacher stage) and ``export`` copies them into
the package with a record: the command, the config, the world they belong to, a SHA-256 per file and
their scores. ``install`` copies a part into a run only after checking the world and every hash.

The base student's and the teacher's test metrics (``test.metrics.json``) ship beside them: a run
that evaluates with the settings they were scored with (``recorded_test``) reuses them instead of
spending minutes re-scoring hash-identical weights with the same greedy decoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import shutil
from pathlib import Path

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.config import PipelineConfig, set_only
from dgpo_agent.training.evaluate import METRICS_SUFFIX
from dgpo_agent.training.run import TEST_TRAJECTORIES, Run, RunDir

ASSETS = Path(str(importlib.resources.files("dgpo_agent"))) / "assets" / "tiny-world"
PARTS = ("tokenizer", "base-student", "teacher")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
METRICS_FILE = Path(TEST_TRAJECTORIES).with_suffix(METRICS_SUFFIX).name  # the part's test metrics, as the harness wrote them
EVAL_SECTIONS = ("world", "store", "agent", "eval")  # the settings a test evaluation depends on
PROBE_QUESTIONS = 32  # test questions whose first greedy turn the record keeps, for a fast check


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(assets: Path = ASSETS) -> dict:
    path = assets / "record.json"
    if not path.is_file():
        raise DGPOError(f"no shipped starting point at {assets}: run `dgpo-agent prepare` or set starting_point: scratch")
    return json.loads(path.read_text())


def part_dir(run: RunDir, part: str) -> Path:
    """Where a shipped part lives in a run."""
    return {"tokenizer": run.tokenizer, "base-student": run.base("student"), "teacher": run.teacher}[part]


def part_files(record: dict, part: str) -> dict[str, str]:
    """The files the record ships for ``part``, by their path inside the part, with their hashes."""
    return {name.split("/", 1)[1]: digest for name, digest in record["files"].items() if name.split("/", 1)[0] == part}


def install(run: Run, part: str, assets: Path = ASSETS) -> None:
    """Copy the shipped ``part`` into the run after checking that it was built for this run's world
    and that every file is the one the record hashed."""
    record = read_record(assets)
    world = {"seed": run.cfg.world.seed, "size": run.cfg.world.size}
    corpus = sha256(run.dir.world.corpus)
    if record["world"]["settings"] != world or record["world"]["corpus_sha256"] != corpus:
        raise DGPOError(
            f"the shipped starting point belongs to world {record['world']['settings']}, not {world}: "
            "set starting_point: scratch to train the tokenizer, base models and teacher for this world"
        )
    dest = part_dir(run.dir, part)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for file, digest in part_files(record, part).items():
        source = assets / part / file
        if not source.is_file() or sha256(source) != digest:
            raise DGPOError(f"shipped file {source} is missing or changed: reinstall dgpo-agent or run `dgpo-agent prepare`")
        shutil.copyfile(source, dest / file)


def export(run: Run, summaries: dict[str, dict], command: str, dest: Path = ASSETS) -> dict:
    """Copy the run's tokenizer, base student and teacher into ``dest`` and write their record."""
    from dgpo_agent.world import load_questions

    cfg = run.cfg
    if dest.exists():
        shutil.rmtree(dest)
    files = {}
    for part in PARTS:
        (dest / part).mkdir(parents=True)
        for name in (*MODEL_FILES, *TOKENIZER_FILES, METRICS_FILE):
            source = part_dir(run.dir, part) / name
            if source.is_file():
                shutil.copyfile(source, dest / part / name)
                files[f"{part}/{name}"] = sha256(source)
    sections = ("world", "store", "tokenizer", "base", "teacher", "agent", "eval")
    questions = [r["question"] for r in load_questions(run.dir.world.questions("test"))[:PROBE_QUESTIONS]]
    record = {
        "command": command,
        "config": section_settings(cfg, sections),
        "world": {
            "settings": {"seed": cfg.world.seed, "size": cfg.world.size},
            "corpus_sha256": sha256(run.dir.world.corpus),
        },
        "seconds": {stage: round(s, 1) for stage, s in stage_seconds(run.dir).items()},
        "scores": scores(summaries),
        "scored_with": section_settings(cfg, EVAL_SECTIONS),
        "first_turns": [
            {"question": q, "turn": t} for q, t in zip(questions, first_turns(run.dir.teacher, questions, cfg.eval.max_new_tokens))
        ],
        "files": files,
    }
    (dest / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def rescore(run: Run, summaries: dict[str, dict], dest: Path = ASSETS) -> dict:
    """Ship the test metrics ``run`` scored the shipped base student and teacher with (its ``base`` and
    ``teacher`` stages, on hash-identical weights), as scored with its evaluation settings: runs with
    those settings then reuse them. The weights and everything else of the record stay as prepared."""
    record = read_record(dest)
    for part in ("base-student", "teacher"):
        name = f"{part}/{METRICS_FILE}"
        weights = {f: d for f, d in part_files(record, part).items() if f != METRICS_FILE}
        for file, digest in weights.items():
            if sha256(part_dir(run.dir, part) / file) != digest:
                raise DGPOError(f"{run.dir.root} scored another {part} than the shipped one: rescore in a run of the shipped starting point (`dgpo-agent prepare --rescore --out NEW_DIR`)")
        shutil.copyfile(part_dir(run.dir, part) / METRICS_FILE, dest / name)
        record["files"][name] = sha256(dest / name)
    record.update(scores=scores(summaries), scored_with=section_settings(run.cfg, EVAL_SECTIONS))
    (dest / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def scores(summaries: dict[str, dict]) -> dict:
    """The shipped parts' test scores, from the ``base`` and ``teacher`` stages' summaries."""
    return {"base_student": summaries["base"]["student_test"], "teacher": summaries["teacher"]["test"]}


def section_settings(cfg: PipelineConfig, sections: tuple[str, ...]) -> dict:
    """The settings of ``sections`` of ``cfg``, as the record keeps them."""
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in sections}


def recorded_test(cfg: PipelineConfig, installed: Path, assets: Path = ASSETS) -> dict | None:
    """The installed part's recorded test metrics (``test.metrics.json``) when this run evaluates with
    the settings they were scored with; None when it must evaluate itself."""
    path = installed / METRICS_FILE
    record = read_record(assets)
    recorded = record.get("scored_with") or record.get("config", {})
    if not path.is_file() or set_only({s: recorded.get(s) for s in EVAL_SECTIONS}) != cfg.settings(*EVAL_SECTIONS):
        return None
    return json.loads(path.read_text())


def stage_seconds(run: RunDir) -> dict[str, float]:
    """Wall seconds each finished stage of ``run`` took (from its stage markers)."""
    return {m.stem: json.loads(m.read_text())["seconds"] for m in run.markers()}


def first_turns(model_dir: Path, questions: list[str], max_new_tokens: int) -> list[str]:
    """The model's first greedy turn for each question, in one batch: a check that needs no store
    (the first turn comes before any search)."""
    from dgpo_agent.backends.base import SamplingParams
    from dgpo_agent.backends.transformers import TransformersPolicy
    from dgpo_agent.rollout import AgentConfig, run_batch

    policy = TransformersPolicy.from_pretrained(str(model_dir), device="cpu")
    config = AgentConfig(max_turns=1, sampling=SamplingParams(max_new_tokens=max_new_tokens))
    states = run_batch(questions, policy, _NoDocs(), config)
    return [next(s["text"] for s in state["segments"] if s["role"] == "model") for state in states]


class _NoDocs:
    """A retriever that finds nothing."""

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        return [[] for _ in queries]
