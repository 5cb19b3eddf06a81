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
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dgpo_agent.errors import DGPOError
from dgpo_agent.training import stages
from dgpo_agent.training.config import PipelineConfig
from dgpo_agent.training.report import write_report
from dgpo_agent.training.run import Run, RunDir


RUN_AGAIN = "run again"  # plan's word for a finished stage that runs again: its outputs were deleted, or an earlier stage's


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections the stage depends on, its predecessors' included
    run: Callable[[Run], dict]
    needed: Callable[[PipelineConfig], bool] = lambda cfg: True
    selectors: tuple[str, ...] = ()  # settings that only pick which methods run: changing them clears nothing


def _trains_own_models(cfg: PipelineConfig) -> bool:
    """The world tokenizer and base models are needed on the world, unless both teacher and student
    come from checkpoints."""
    teacher_given = cfg.teacher.model or cfg.teacher.start_from
    student_given = cfg.cold_start.student or cfg.base.student_from
    return cfg.on_world and not (teacher_given and student_given)


def _needs_base(cfg: PipelineConfig) -> bool:
    """Base models: the world's, or a student cut from a checkpoint."""
    return _trains_own_models(cfg) or cfg.base.student_from is not None


def _needs_demonstrations(cfg: PipelineConfig) -> bool:
    """The world's oracle always runs (its test EM is the ceiling); elsewhere demonstrations are only
    for a teacher fine-tuned on them."""
    return cfg.on_world or cfg.trains_teacher


WORLD = ("world", "data")
MODELS = (*WORLD, "starting_point", "tokenizer", "base")
STAGES = (
    Stage("world", WORLD, stages.world_stage),
    Stage("index", (*WORLD, "store"), stages.index_stage),
    Stage("oracle", (*WORLD, "store", "agent", "starting_point", "teacher"), stages.oracle_stage, _needs_demonstrations),
    Stage("tokenizer", (*WORLD, "starting_point", "tokenizer"), stages.tokenizer_stage, _trains_own_models),
    Stage("base", (*MODELS, "store", "agent", "eval"), stages.base_stage, _needs_base),
    Stage("teacher", (*MODELS, "store", "agent", "eval", "teacher"), stages.teacher_stage),
    Stage("tgo", (*MODELS, "store", "agent", "teacher", "tgo"), stages.tgo_stage),
    Stage("cold-start", (*MODELS, "store", "agent", "eval", "teacher", "tgo", "cold_start"), stages.cold_start_stage,
          selectors=("cold_start.method", "cold_start.baselines")),
    # RL starts from cold_start/<cold_start.method>, so that one is not a selector here.
    Stage("rl", (*MODELS, "store", "agent", "eval", "teacher", "tgo", "cold_start", "rl"), stages.rl_stage, lambda cfg: cfg.rl.max_steps > 0,
          selectors=("cold_start.baselines", "rl.method", "rl.baselines")),
    Stage("results", (*MODELS, "store", "agent", "eval", "teacher", "tgo", "cold_start", "rl"), stages.results_stage),
)


def validate(cfg: PipelineConfig) -> None:
    """Refuse a config that cannot run before any stage starts, with the fix in the message."""
    if missing := cfg.data.missing_files():
        raise DGPOError(
            f"data file(s) not found: {', '.join(missing)}: download Search-R1's data and corpus (README, "
            "'Real scale') or set data.train/dev/test/corpus in your --config YAML"
        )
    if cfg.data.kind == "wikipedia":
        from dgpo_agent.wikipedia import sample_path

        sample_path()  # gensim installed, or the one-line fix


def run_pipeline(cfg: PipelineConfig, stop_after: str | None = None) -> dict[str, dict]:
    """Run the stages in order up to ``stop_after``; return each stage's summary."""
    names = [s.name for s in STAGES]
    if stop_after is not None and stop_after not in names:
        raise DGPOError(f"unknown stage {stop_after!r} for --stop-after: choose one of {', '.join(names)}")
    validate(cfg)
    run = Run(cfg)
    steps = plan(run, stop_after)
    _print_plan(steps)
    again = {name for name, action in steps if action.startswith(RUN_AGAIN)}
    run.dir.root.mkdir(parents=True, exist_ok=True)
    run.dir.config.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    summaries = {}
    for stage in STAGES:
        if stage.needed(cfg):
            summaries[stage.name] = _run_stage(stage, run, again=stage.name in again)
        if stage.name == stop_after:
            break
    write_report(run.dir, summaries)
    return summaries


def _run_stage(stage: Stage, run: Run, again: bool = False) -> dict:
    """Run ``stage``, or read back its summary where it finished with these settings and its outputs
    are all still there; ``again`` runs it even so (an earlier stage ran again). Running again
    resumes: a method stage keeps the methods it finished."""
    from rich.console import Console

    console = Console()
    marker = run.dir.marker(stage.name)
    fingerprint = run.cfg.fingerprint(*stage.sections)
    _restore_set_aside(stage, fingerprint, run.dir)
    if marker.is_file() and not again:
        record = json.loads(marker.read_text())
        if record["fingerprint"] == fingerprint and not _deleted_outputs(record, stage.name, run):
            console.print(f"[green]✓[/green] {stage.name}: cached ({record['seconds']:.1f} s when run)")
            return record["summary"]
    _start_or_resume(stage, run.cfg.fingerprint(*stage.sections, leave_out=stage.selectors), run.dir)
    console.print(f"[bold]▶ {stage.name}[/bold]")
    start = time.perf_counter()
    summary = json.loads(json.dumps(stage.run(run)))  # as a cached run would read it back
    seconds = time.perf_counter() - start
    marker.parent.mkdir(exist_ok=True)
    sections = {name: run.cfg.fingerprint(name) for name in stage.sections}
    made = [*run.dir.outputs(stage.name), *_method_dirs(run, stage.name).values()]
    outputs = [str(path.relative_to(run.dir.root)) for path in made if path.exists()]
    record = {"fingerprint": fingerprint, "sections": sections, "seconds": seconds, "outputs": outputs, "summary": summary}
    marker.write_text(json.dumps(record, indent=2))
    shutil.rmtree(_aside(run.dir, stage), ignore_errors=True)  # the new outputs are complete: the old ones can go
    console.print(f"[green]✓[/green] {stage.name}: {seconds:.1f} s")
    return summary


def plan(run: Run, stop_after: str | None = None) -> list[tuple[str, str]]:
    """What ``run_pipeline`` will do with each stage, and why, decided before anything runs: cached,
    run, resumed, started over (naming the settings that changed), and which methods a method stage
    will train (a method whose model is finished is kept)."""
    from dgpo_agent.training.stages import finished

    cfg, steps = run.cfg, []
    ran_again = None  # the first finished stage whose outputs were deleted: it and every later one run again
    for stage in STAGES:
        if not stage.needed(cfg):
            steps.append((stage.name, "not needed"))
        else:
            marker, started = run.dir.marker(stage.name), run.dir.started(stage.name)
            record = json.loads(marker.read_text()) if marker.is_file() else None
            if record and record["fingerprint"] == cfg.fingerprint(*stage.sections):
                if deleted := _deleted_outputs(record, stage.name, run):
                    steps.append((stage.name, f"{RUN_AGAIN}: {', '.join(deleted)} deleted"))
                    ran_again = ran_again or stage.name
                elif ran_again:
                    steps.append((stage.name, f"{RUN_AGAIN} after {ran_again}"))
                else:
                    steps.append((stage.name, "cached"))
            elif started.is_file() and started.read_text() == cfg.fingerprint(*stage.sections, leave_out=stage.selectors):
                steps.append((stage.name, "resume" if record is None else "keep what is trained"))
            elif record is not None or started.is_file():
                recorded = (record or {}).get("sections")  # markers written before sections were recorded have none
                changed = [s for s in stage.sections if recorded and recorded.get(s) != cfg.fingerprint(s)]
                steps.append((stage.name, f"start over: {', '.join(changed) or 'settings'} changed"))
            else:
                steps.append((stage.name, "run"))
            models = _method_dirs(run, stage.name)
            if models and steps[-1][1] != "cached":
                fresh = steps[-1][1].startswith("start over")
                todo = [m for m, path in models.items() if fresh or not finished(path)]
                steps[-1] = (stage.name, f"{steps[-1][1]}; train {', '.join(todo) or 'nothing'}")
        if stage.name == stop_after:
            break
    return steps


def _deleted_outputs(record: dict, stage: str, run: Run) -> list[str]:
    """The outputs a finished stage recorded (its folders, and each method's model) that are gone:
    deleted by hand, they would otherwise leave a cached summary of models no longer there. For a
    marker written before outputs were recorded, its methods' models."""
    recorded = record.get("outputs")
    if recorded is None:
        recorded = [str(path.relative_to(run.dir.root)) for path in _method_dirs(run, stage).values()]
    return [name for name in recorded if not (run.dir.root / name).exists()]


def _method_dirs(run: Run, stage: str) -> dict[str, Path]:
    """The model folder of each method a method stage trains."""
    if stage == "cold-start":
        return {m: run.dir.cold_start(m) for m in run.cfg.cold_start.methods()}
    if stage == "rl":
        return {m: run.dir.policy(m) for m in run.cfg.rl.methods()}
    return {}


def _print_plan(steps: list[tuple[str, str]]) -> None:
    from rich.console import Console

    Console().print("[bold]plan:[/bold] " + " · ".join(f"{name}: {action}" for name, action in steps))


def _start_or_resume(stage: Stage, fingerprint: str, run: RunDir) -> None:
    """Resume a stage interrupted (or, with other selectors, finished) with the same settings. One whose
    settings changed starts over, with its outputs and marker set aside until the new ones are complete:
    an interrupted run leaves the previous result there, and going back to its settings restores it."""
    started = run.started(stage.name)
    if started.is_file() and started.read_text() == fingerprint:
        return
    aside = _aside(run, stage)
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir(parents=True)
    for path in (*run.outputs(stage.name), run.marker(stage.name)):
        if path.exists():
            os.replace(path, aside / path.name)
    started.write_text(fingerprint)


def _restore_set_aside(stage: Stage, fingerprint: str, run: RunDir) -> None:
    """Bring back the outputs a started-over stage set aside, when they were made with ``fingerprint``
    (the settings went back before the new run finished)."""
    aside = _aside(run, stage)
    kept = aside / run.marker(stage.name).name
    if not kept.is_file() or json.loads(kept.read_text())["fingerprint"] != fingerprint:
        return
    for path in run.outputs(stage.name):
        if path.exists():
            shutil.rmtree(path)
    for path in (*run.outputs(stage.name), run.marker(stage.name)):
        if (aside / path.name).exists():
            os.replace(aside / path.name, path)
    run.started(stage.name).unlink(missing_ok=True)
    shutil.rmtree(aside)


def _aside(run: RunDir, stage: Stage) -> Path:
    """Where a stage that starts over keeps its previous outputs until its new ones are complete."""
    return run.stages / f"{stage.name}.previous"
