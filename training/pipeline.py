"""``dgpo-agent train``: the pipeline as a list of cached, resumable stages.

Stages so far: world → index → oracle (the expert demonstrations and the EM ceiling). Each stage
writes into the run directory and records a fingerprint of the settings it read; a re-run skips a
stage whose fingerprint still matches and resumes one that was interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.config import PipelineConfig
from dgpo_agent.training.report import write_report


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections the stage depends on
    run: Callable[[PipelineConfig, Path], dict]


def world_dir(run: Path) -> Path:
    return run / "world"


def store_dir(run: Path) -> Path:
    return run / "world" / "chroma"


def _world(cfg: PipelineConfig, run: Path) -> dict:
    from dgpo_agent.world import generate_world
    from dgpo_agent.world.kb import WorldConfig

    return generate_world(world_dir(run), WorldConfig.preset(cfg.world.size, seed=cfg.world.seed))


def _index(cfg: PipelineConfig, run: Path) -> dict:
    from dgpo_agent.store import Embedder, index_corpus

    embedder = Embedder(cfg.store.embedder) if cfg.store.embedder else None
    store = index_corpus(
        world_dir(run) / "corpus.jsonl", store_dir(run), cfg.store.collection, embedder, cfg.store.batch_size
    )
    return {"passages": store.count()}


def _oracle(cfg: PipelineConfig, run: Path) -> dict:
    from dgpo_agent.training.demonstrations import write_demonstrations

    return write_demonstrations(world_dir(run), store_dir(run), run / "oracle", cfg)


STAGES = (
    Stage("world", ("world",), _world),
    Stage("index", ("world", "store"), _index),
    Stage("oracle", ("world", "store", "agent"), _oracle),
)


def run_pipeline(cfg: PipelineConfig, stop_after: str | None = None) -> dict[str, dict]:
    """Run the stages in order up to ``stop_after``; return each stage's summary."""
    names = [s.name for s in STAGES]
    if stop_after is not None and stop_after not in names:
        raise DGPOError(f"unknown stage {stop_after!r} for --stop-after: choose one of {', '.join(names)}")
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    summaries = {}
    for stage in STAGES:
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
    console.print(f"[bold]▶ {stage.name}[/bold]")
    start = time.perf_counter()
    summary = json.loads(json.dumps(stage.run(cfg, run)))  # as a cached run would read it back
    seconds = time.perf_counter() - start
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint, "seconds": seconds, "summary": summary}, indent=2))
    console.print(f"[green]✓[/green] {stage.name}: {seconds:.1f} s")
    return summary
