"""Writing a world to disk and reading it back.

The files are byte-identical for the same seed and config: records are written in a fixed order
with sorted keys, and ``world.json`` records a sha256 of every other file so a run can tell that
its world has not changed. ``WorldDir`` is the one place their names are spelled.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from dgpo_agent.errors import DGPOError
from dgpo_agent.world.corpus import Evidence, build_corpus
from dgpo_agent.world.kb import KB, WorldConfig, build_kb
from dgpo_agent.world.questions import SPLITS, generate_questions, partition


@dataclass(frozen=True)
class WorldDir:
    """A world's folder: the corpus, the questions of each split, the knowledge base, the summary and
    the Chroma store indexed from the corpus."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.jsonl"

    def questions(self, split: str) -> Path:
        return self.root / f"{split}.jsonl"

    @property
    def kb(self) -> Path:
        return self.root / "kb.json"

    @property
    def summary(self) -> Path:
        return self.root / "world.json"

    @property
    def store(self) -> Path:
        return self.root / "chroma"


def generate_world(out_dir: str | Path, config: WorldConfig | None = None) -> dict[str, Any]:
    """Build the world for ``config`` and write corpus, questions, KB and a summary into ``out_dir``.

    Returns the summary that ``world.json`` holds (config, counts, file hashes).
    """
    config = config or WorldConfig()
    world = WorldDir(Path(out_dir))
    world.root.mkdir(parents=True, exist_ok=True)
    kb = build_kb(config)
    corpus, evidence = build_corpus(kb, config)
    split_of = partition(kb, config)
    splits = generate_questions(kb, evidence, split_of, config)
    hashes = {world.corpus.name: _write_jsonl(world.corpus, corpus)}
    for split in SPLITS:
        hashes[world.questions(split).name] = _write_jsonl(world.questions(split), splits[split])
    hashes[world.kb.name] = _write_json(world.kb, _kb_record(kb, evidence, split_of))
    summary = {
        "config": dataclasses.asdict(config),
        "seed": config.seed,
        "counts": _counts(kb, corpus, splits),
        "sha256": hashes,
    }
    _write_json(world.summary, summary)
    return summary


def load_questions(path: str | Path) -> list[dict]:
    """The question records of one split file (``train.jsonl`` …)."""
    path = Path(path)
    if not path.is_file():
        raise DGPOError(f"no question file at {path}: generate the world first (`dgpo-agent world`)")
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write a split or corpus beside its target and rename it into place, so a failed or interrupted
    build never leaves half a file (the Wikipedia sample's and your question files' splits)."""
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)


def load_kb(world_dir: str | Path) -> KB:
    """The knowledge base a world was generated from (for analysis and fresh-name reservation)."""
    path = WorldDir(Path(world_dir)).kb
    if not path.is_file():
        raise DGPOError(f"no kb.json in {world_dir}: generate the world first (`dgpo-agent world`)")
    return KB.from_json(json.loads(path.read_text(encoding="utf-8")))


def _kb_record(kb: KB, evidence: Evidence, split_of: dict[str, str]) -> dict:
    """The KB with each fact's passages and each question-subject entity's split."""
    record = kb.to_json()
    for fact in record["facts"]:
        fact["passages"] = evidence[(fact["subject"], fact["relation"])]
    record["splits"] = split_of
    return record


def _counts(kb: KB, corpus: list[dict], splits: dict[str, list[dict]]) -> dict:
    return {
        "passages": len(corpus),
        "facts": len(kb.facts),
        "distractor_pairs": len(kb.near),
        "entities": dict(sorted(Counter(e.kind for e in kb.entities.values()).items())),
        "questions": {
            split: {"all": len(records), **dict(sorted(Counter(r["data_source"] for r in records).items()))}
            for split, records in splits.items()
        },
    }


def _write_jsonl(path: Path, records: Iterable[dict]) -> str:
    return _write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _write_json(path: Path, data: Any) -> str:
    return _write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write(path: Path, text: str) -> str:
    """Write ``text`` and return its sha256."""
    data = text.encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
