"""What every training stage shares around ``Trainer.train``: resuming, JSONL metrics, a rich
progress bar, and the EM curve measured through the graph while a model trains.

Pretraining, SFT and KD all go through ``train_resumable``, so an interrupted stage picks up at its
last checkpoint and its logs (``metrics.jsonl``, ``curve.jsonl``) hold each step exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

METRICS = "metrics.jsonl"
CURVE = "curve.jsonl"


def train_resumable(trainer: Trainer) -> dict[str, Any]:
    """Train from the last checkpoint in ``output_dir`` (if any), save the final model there, and return
    the Trainer's metrics plus ``steps`` and ``resumed_from``."""
    out = Path(trainer.args.output_dir)
    checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
    resumed_from = int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0
    for name in (METRICS, CURVE):
        drop_after(out / name, resumed_from)
    trainer.remove_callback(PrinterCallback)  # the Trainer prints each log dict when tqdm is off
    trainer.add_callback(JsonlMetrics(out / METRICS))
    trainer.add_callback(RichProgress())
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))
    return {**result.metrics, "steps": trainer.state.global_step, "resumed_from": resumed_from}


def drop_after(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint a run resumes from (they will be logged again), and a last
    line cut by a kill."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row["step"] <= step:
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


class JsonlMetrics(TrainerCallback):
    """Appends every log entry (loss, learning rate, grad norm, CE/KD terms) with its step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            with self.path.open("a") as sink:
                sink.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class RichProgress(TrainerCallback):
    """A rich progress bar over optimiser steps with the latest loss (the Trainer's tqdm stays off)."""

    def __init__(self) -> None:
        self.progress: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn(f"{Path(args.output_dir).name}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"loss {logs['loss']:.3f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class EMCurve(TrainerCallback):
    """Every ``every`` steps (and at the first and last), ``measure(model)`` → metrics is appended to
    ``curve.jsonl``: the student's EM through the graph against optimiser steps."""

    def __init__(self, measure: Callable[[Any], dict], every: int) -> None:
        self.measure = measure
        self.every = every

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == 0:
            self._record(args, state, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._record(args, state, model)

    def _record(self, args: Any, state: Any, model: Any) -> None:
        if not state.is_world_process_zero:
            return
        was_training = model.training
        metrics = self.measure(model.eval())
        model.train(was_training)
        with (Path(args.output_dir) / CURVE).open("a") as sink:
            sink.write(json.dumps({"step": state.global_step, **metrics}) + "\n")
