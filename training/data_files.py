"""Your question files as a run's splits: Search-R1 parquet or JSONL read once, checked, and written
into the run's world folder, so every later stage reads questions the same way whatever their source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dgpo_agent.errors import DGPOError

if TYPE_CHECKING:
    from dgpo_agent.training.config import DataSettings
    from dgpo_agent.world import WorldDir

MAX_HELD_OUT = 500


def held_out(train: int, requested: int | None) -> int:
    """How many training questions become dev when no dev file is given: ``requested``, or a tenth of
    them (at least one, at most ``MAX_HELD_OUT``)."""
    count = requested if requested is not None else min(MAX_HELD_OUT, max(1, train // 10))
    if count >= train:
        raise DGPOError(f"data.dev_questions={count} leaves no training questions of {train}: lower it or give a data.dev file")
    return count


def write_splits(data: DataSettings, world: WorldDir) -> dict:
    """Read ``data``'s question files (every one before anything is written), hold out dev when there
    is no dev file, and write ``<split>.jsonl`` into ``world``; returns where each split came from."""
    from dgpo_agent.evals.data import load_dataset
    from dgpo_agent.world.files import write_jsonl

    splits = {"train": load_dataset(data.train), "test": load_dataset(data.test)}
    sources = {"train": data.train, "test": data.test}
    if data.dev:
        splits["dev"], sources["dev"] = load_dataset(data.dev), data.dev
    else:
        count = held_out(len(splits["train"]), data.dev_questions)
        splits["train"], splits["dev"] = splits["train"][:-count], splits["train"][-count:]
        sources["dev"] = f"the last {count} questions of {data.train}"
    _refuse_overlap(splits)
    world.root.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_jsonl(world.questions(split), records)
    return {"source": "files", "files": sources, "corpus": data.corpus}


def _refuse_overlap(splits: dict[str, list[dict]]) -> None:
    """A test question also in train or dev would be reported as learnt: refuse it, naming one."""
    test = {r["question"].strip().casefold(): r["id"] for r in splits["test"]}
    for split in ("train", "dev"):
        for record in splits[split]:
            if (key := record["question"].strip().casefold()) in test:
                raise DGPOError(f"test question {test[key]!r} is also in {split} (as {record['id']!r}): remove it from one of the files")
