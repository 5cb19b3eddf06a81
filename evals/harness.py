"""The ARC evaluation harness: run a model over a dataset, keep every trajectory, compute the metrics.

Per chunk of ``batch_size`` questions the agent runs through the batched runner (the graph's own step
logic: one generation and one retrieval call per turn) and the evidence probes run in one more
generation call. Rows go to one JSONL file per model, so an interrupted evaluation resumes where it
stopped. Metrics are recomputed from the stored trajectories and rounded, so the same trajectories
always give byte-identical metrics; decoding is greedy unless a temperature is given.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from dgpo_agent.errors import DGPOError
from dgpo_agent.evals.paired import compare
from dgpo_agent.evals.probes import run_probes
from dgpo_agent.evals.scoring import aggregate, score
from dgpo_agent.protocol import ChatFormat
from dgpo_agent.rollout import AgentConfig, run_batch
from dgpo_agent.trajectories import CHUNK, append_rows, trajectory_row

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class EvalConfig:
    """How models are evaluated: the agent's settings (greedy by default) and questions per batch."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    batch_size: int = CHUNK

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DGPOError(f"batch_size must be at least 1 (got {self.batch_size})")

    def describe(self) -> dict[str, Any]:
        """The settings that change results (batch size does not, for a batch-invariant greedy backend).
        A chat format other than Search-R1's is named; records made before the format existed describe
        the same runs as they did."""
        fmt = self.agent.format
        named = {} if fmt == ChatFormat() else asdict(fmt)
        return {"max_turns": self.agent.max_turns, "top_k": self.agent.top_k, **asdict(self.agent.sampling), **named}


def evaluate(
    records: Sequence[dict],
    policy,
    retriever,
    config: EvalConfig,
    path: Path,
    label: str = "eval",
    made_by: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Trajectory rows for ``records``: the question record, the agent's ``answer``, ``steps`` and
    ``segments``, its ``probes`` (None without gold evidence) and ``scores``; appended to ``path``.

    ``made_by`` (the model, its weights, the data) is recorded with the settings beside ``path``, and a
    resume refuses rows that another model, other weights or other settings wrote there: otherwise a
    checkpoint retrained in place would be reported with its old trajectories.
    """
    if made_by is not None:
        _claim(path, {**made_by, **config.describe()})

    def run(chunk: list[dict]) -> list[dict]:
        states = run_batch([r["question"] for r in chunk], policy, retriever, config.agent)
        probes = run_probes(chunk, policy, retriever, config.agent)
        rows = [{**trajectory_row(r, s), "probes": p} for r, s, p in zip(chunk, states, probes, strict=True)]
        return [{**row, "scores": score(row, row)} for row in rows]

    return append_rows(list(records), path, label, run, chunk=config.batch_size)


def rollout_records(
    records: list[dict], policy, retriever, config: AgentConfig, path: Path, label: str, tokens: bool = False
) -> list[dict]:
    """Roll out ``records`` (question records with an ``id``) and append scored rows to ``path``, without
    the evidence probes: the oracle's demonstrations and the teacher's outputs (TGO).

    A re-run skips ids already written, so an interrupted run resumes. With ``tokens`` each row also
    keeps the sampled token ids, the environment mask and the log-probs (for training).
    """

    def run(chunk: list[dict]) -> list[dict]:
        states = run_batch([r["question"] for r in chunk], policy, retriever, config)
        rows = [trajectory_row(record, state, tokens) for record, state in zip(chunk, states, strict=True)]
        return [{**row, "scores": score(row, row)} for row in rows]

    return append_rows(records, path, label, run)


def metrics(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Every metric per ``data_source`` and overall (``all``), recomputed from the trajectories."""
    return aggregate((row["data_source"], score(row, row)) for row in rows)


def model_spec(arg: str) -> tuple[str, str]:
    """``NAME=MODEL`` or just ``MODEL`` (named ``oracle``, or after the last part of its path or hub name)."""
    name, sep, spec = arg.partition("=")
    if not (sep and _NAME_RE.fullmatch(name)):
        spec = arg
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(arg.rstrip("/")).name or arg).strip("-.")
    if not spec or not name:
        raise DGPOError(f"cannot name the model {arg!r}: pass NAME=MODEL, e.g. student=runs/tiny/student")
    return name, spec


def model_specs(args: Sequence[str]) -> list[tuple[str, str]]:
    """The ``(name, model)`` pairs of ``--model`` arguments, refusing two models of the same name."""
    models = [model_spec(arg) for arg in args]
    _check_names(models)
    return models


def _check_names(models: Sequence[tuple[str, Any]]) -> None:
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        raise DGPOError(f"two models are named {max(names, key=names.count)!r}: name them NAME=MODEL")


def evaluate_models(
    models: Sequence[tuple[str, Any]],
    records: Sequence[dict],
    retriever,
    config: EvalConfig,
    out: Path,
    data: Path,
    **policy_kwargs: Any,
) -> dict:
    """Evaluate each ``(name, model spec)`` in turn on ``records`` from the file ``data``, and compare
    every later model with the first, question by question (``evals.paired``).

    Trajectories go to ``out/trajectories/<name>.jsonl`` beside the settings they were made with; a
    re-run resumes them, and refuses to mix in rows made with other settings, data or weights.
    """
    from dgpo_agent.agent import resolve_policy

    _check_names(models)
    results = {"data": describe_data(records, data), "settings": config.describe(), "models": []}
    paths = {name: out / "trajectories" / f"{name}.jsonl" for name, _ in models}
    for name, spec in models:
        path = paths[name]
        made_by = {**model_identity(spec), "data_sha256": results["data"]["sha256"]}
        _claim(path, {**made_by, **config.describe()})  # here, not in evaluate(): refuse before loading the model
        policy = resolve_policy(spec, **policy_kwargs)
        rows = evaluate(records, policy, retriever, config, path, label=name)
        results["models"].append({"name": name, "model": str(spec), "metrics": metrics(rows)})
    first = models[0][0]
    results["comparisons"] = compare([(name, first) for name, _ in models[1:]], paths, [r["id"] for r in records])
    return results


def describe_data(records: Sequence[dict], data: Path) -> dict:
    """The evaluated file, its SHA-256 and the questions per data source, as reports print them."""
    sources = sorted({r["data_source"] for r in records})
    return {
        "file": str(data),
        "sha256": hashlib.sha256(Path(data).read_bytes()).hexdigest(),
        "questions": len(records),
        "sources": {s: sum(r["data_source"] == s for r in records) for s in sources},
    }


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def model_identity(spec: Any) -> dict[str, Any]:
    """What made a model's trajectories: its spec and, for a local checkpoint, the SHA-256 of its
    weight files (hub names and servers have no local weights to hash, so their spec stands alone)."""
    return {"model": str(spec), "weights_sha256": weights_sha256(spec)}


def weights_sha256(spec: Any) -> str | None:
    """SHA-256 over a local checkpoint's weight files (names and contents, in name order), or over a
    single weights file; None for anything else."""
    path = Path(str(spec))
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    else:
        return None
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _claim(trajectories: Path, settings: dict) -> None:
    """Record what made a trajectory file (``<name>.settings.json`` beside it); refuse to resume one
    that other settings, data or weights made. A local checkpoint is its weights: the same weights
    under another path (a run directory copied or moved) resume, and the record takes the new path."""
    path = trajectories.with_suffix(".settings.json")
    settings = json.loads(json.dumps(settings))  # tuples as JSON lists, to compare with what was written
    if path.is_file():
        claimed = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | claimed.keys() if settings.get(k) != claimed.get(k))
        if settings.get("weights_sha256") is not None and "weights_sha256" not in changed:
            changed = [k for k in changed if k != "model"]
        if changed:
            raise DGPOError(
                f"{trajectories} holds trajectories made with other settings or data ({', '.join(changed)} "
                f"differ, see {path.name}): delete both files, or write elsewhere (dgpo-agent eval: a new --out)"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
