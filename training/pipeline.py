"""``dgpo-agent train``: the pipeline as a list of cached, resumable stages.

world → index → oracle → tokenizer → base → teacher → tgo → cold-start → rl → results. Each stage writes into the
run directory and records a fingerprint of the settings it read; a re-run skips a stage whose
fingerprint still matches, resumes one that was interrupted with the same settings, and starts over
(clearing its outputs) one whose settings changed. A stage that trains several methods, each in its
own folder, only re-runs when just the list of methods changed: the methods it has already trained
resume at their end, so adding a baseline trains only that baseline.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dgpo_agent.errors import DGPOError
from dgpo_agent.training import stages
from dgpo_agent.training.config import PipelineConfig
from dgpo_agent.training.report import write_report


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections the stage depends on, its predecessors' included
    run: Callable[[PipelineConfig, Path], dict]
    outputs: tuple[str, ...] = ()  # run-relative paths cleared when the stage starts over
    needed: Callable[[PipelineConfig], bool] = lambda cfg: True
    selectors: tuple[str, ...] = ()  # settings that only pick which methods run: changing them clears nothing


def _world(cfg: PipelineConfig, run: Path) -> dict:
    from dgpo_agent.world import generate_world
    from dgpo_agent.world.kb import WorldConfig

    return generate_world(stages.world_dir(run), WorldConfig.preset(cfg.world.size, seed=cfg.world.seed))


def _index(cfg: PipelineConfig, run: Path) -> dict:
    from dgpo_agent.store import Embedder, index_corpus

    embedder = Embedder(cfg.store.embedder) if cfg.store.embedder else None
    store = index_corpus(
        stages.world_dir(run) / "corpus.jsonl", stages.store_dir(run), cfg.store.collection, embedder, cfg.store.batch_size,
        hnsw=cfg.store.hnsw(),
    )
    return {"passages": store.count()}


def _oracle(cfg: PipelineConfig, run: Path) -> dict:
    from dgpo_agent.training.demonstrations import write_demonstrations

    return write_demonstrations(stages.world_dir(run), stages.store_dir(run), run / "oracle", cfg)


def _trains_own_models(cfg: PipelineConfig) -> bool:
    """Tokenizer and base models are needed unless both teacher and student are given checkpoints."""
    return not (cfg.teacher.model and cfg.cold_start.student)


WORLD = ("world", "data")
MODELS = (*WORLD, "starting_point", "tokenizer", "base")
STAGES = (
    Stage("world", WORLD, _world, ("world",)),
    Stage("index", (*WORLD, "store"), _index),
    Stage("oracle", (*WORLD, "store", "agent", "starting_point", "teacher"), _oracle, ("oracle",)),
    Stage("tokenizer", (*WORLD, "starting_point", "tokenizer"), stages.tokenizer_stage, ("tokenizer",), _trains_own_models),
    Stage("base", (*MODELS, "store", "agent", "eval"), stages.base_stage, ("base",), _trains_own_models),
    Stage("teacher", (*MODELS, "store", "agent", "eval", "teacher"), stages.teacher_stage, ("teacher",)),
    Stage("tgo", (*MODELS, "store", "agent", "teacher", "tgo"), stages.tgo_stage, ("tgo",)),
    Stage("cold-start", (*MODELS, "store", "agent", "eval", "teacher", "tgo", "cold_start"), stages.cold_start_stage, ("cold_start",),
          selectors=("cold_start.method", "cold_start.baselines")),
    # RL starts from cold_start/<cold_start.method>, so that one is not a selector here.
    Stage("rl", (*MODELS, "store", "agent", "eval", "teacher", "tgo", "cold_start", "rl"), stages.rl_stage, ("rl",), lambda cfg: cfg.rl.steps > 0,
          selectors=("cold_start.baselines", "rl.method", "rl.baselines")),
    Stage("results", (*MODELS, "store", "agent", "eval", "teacher", "tgo", "cold_start", "rl"), stages.results_stage, ("arc",)),
)


def validate(cfg: PipelineConfig) -> None:
    """Refuse a config that cannot run before any stage starts, with the fix in the message."""
    if cfg.starting_point not in ("shipped", "scratch"):
        raise DGPOError(f"unknown starting_point {cfg.starting_point!r}: choose shipped or scratch")
    if cfg.data.external:
        missing = [f"data.{k}={v}" for k, v in dataclasses.asdict(cfg.data).items() if not v or not Path(v).is_file()]
        if missing:
            raise DGPOError(
                f"data file(s) not found: {', '.join(missing)}: download Search-R1's data and corpus (README, "
                "'Real scale') or set data.train/test/corpus in your --config YAML"
            )
        raise DGPOError("external Search-R1 data is validated but not yet trainable by `dgpo-agent train`: use the world")


def run_pipeline(cfg: PipelineConfig, stop_after: str | None = None) -> dict[str, dict]:
    """Run the stages in order up to ``stop_after``; return each stage's summary."""
    names = [s.name for s in STAGES]
    if stop_after is not None and stop_after not in names:
        raise DGPOError(f"unknown stage {stop_after!r} for --stop-after: choose one of {', '.join(names)}")
    validate(cfg)
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    summaries = {}
    for stage in STAGES:
        if stage.needed(cfg):
            summaries[stage.name] = _run_stage(stage, cfg, run)
        if stage.name == stop_after:
            break
    write_report(run, summaries)
    return summaries


def _run_stage(stage: Stage, cfg: PipelineConfig, run: Path) -> dict:
    from rich.console import Console

    console = Console()
    marker = run / ".stages" / f"{stage.name}.json"
    fingerprint = cfg.fingerprint(*stage.sections)
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record["fingerprint"] == fingerprint:
            console.print(f"[green]✓[/green] {stage.name}: cached ({record['seconds']:.1f} s when run)")
            return record["summary"]
    _start_or_resume(stage, cfg.fingerprint(*stage.sections, leave_out=stage.selectors), run)
    console.print(f"[bold]▶ {stage.name}[/bold]")
    start = time.perf_counter()
    summary = json.loads(json.dumps(stage.run(cfg, run)))  # as a cached run would read it back
    seconds = time.perf_counter() - start
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint, "seconds": seconds, "summary": summary}, indent=2))
    console.print(f"[green]✓[/green] {stage.name}: {seconds:.1f} s")
    return summary


def _start_or_resume(stage: Stage, fingerprint: str, run: Path) -> None:
    """Resume a stage interrupted (or, with other selectors, finished) with the same settings; clear its
    outputs if its settings changed."""
    started = run / ".stages" / f"{stage.name}.started"
    if started.is_file() and started.read_text() == fingerprint:
        return
    for output in stage.outputs:
        path = run / output
        if path.is_dir():
            shutil.rmtree(path)
    started.parent.mkdir(exist_ok=True)
    started.write_text(fingerprint)
