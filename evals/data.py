"""Evaluation questions from a Search-R1-format file (parquet or JSONL), as plain question records.

Search-R1 rows carry ``data_source``, ``question`` and ``golden_answers`` (sometimes only
``reward_model.ground_truth.target``, and a chat ``prompt``); the embedded world's rows also carry
``evidence`` (gold passage ids). Whatever the source, a record here is ``id``, ``question``,
``golden_answers`` (strings), ``data_source`` and, when known, ``evidence``: the harness re-renders
the prompt from the question with ``protocol``, so a file's own ``prompt`` is only used to recover a
missing question.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import read_question

def load_dataset(path: str | Path, limit: int | None = None) -> list[dict]:
    """The question records of a ``.parquet`` or ``.jsonl`` file, in file order (the first ``limit``)."""
    path = Path(path)
    if not path.is_file():
        raise DGPOError(f"no data file at {path}: pass a Search-R1 .parquet or .jsonl file")
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            rows = pd.read_parquet(path).to_dict("records")
        except (OSError, ValueError) as err:
            raise DGPOError(f"{path} is not a readable parquet file ({str(err).splitlines()[0]}): pass a Search-R1 .parquet file") from None
    elif path.suffix in (".jsonl", ".json"):
        rows, number = [], 0
        with path.open(encoding="utf-8") as lines:
            try:
                for number, line in enumerate(lines, 1):
                    rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError:
                raise DGPOError(f"{path} is not JSONL (line {number}): pass one JSON object per line") from None
            except UnicodeDecodeError as err:
                raise DGPOError(f"{path}, after line {number}: not UTF-8 text ({err.reason}): convert the file to UTF-8") from None
    else:
        raise DGPOError(f"cannot read {path.name}: pass a Search-R1 .parquet or .jsonl file")
    rows = rows[:limit] if limit is not None else rows
    records = [_record(row, i, path.stem) for i, row in enumerate(rows)]
    if not records:
        raise DGPOError(f"{path} holds no questions: pass a file with at least one row")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DGPOError(f"{path} repeats the id {duplicate!r}: give every row a unique id (or none)")
    return records


def _record(row: Mapping[str, Any], index: int, default_source: str) -> dict:
    source = str(row.get("data_source") or default_source)
    question = row.get("question") or _question_from_prompt(row.get("prompt"))
    golds = _strings(row.get("golden_answers"))
    if not golds:
        golds = _strings(((row.get("reward_model") or {}).get("ground_truth") or {}).get("target"))
    if not isinstance(question, str) or not question.strip():
        raise DGPOError(f"row {index} has no question: give it a 'question' (or a Search-R1 'prompt')")
    if not golds:
        raise DGPOError(f"row {index} has no gold answer: give it 'golden_answers' (a list of strings)")
    row_id = row.get("id")
    record = {"id": f"{source}_{index}" if row_id is None else str(row_id), "question": question.strip(),
              "golden_answers": golds, "data_source": source}
    evidence = _strings(row.get("evidence"))
    if evidence:
        record["evidence"] = evidence
    return record


def _strings(value: Any) -> list[str]:
    """A string or a list-like of strings (parquet gives numpy arrays) as a list of strings."""
    if value is None or isinstance(value, float):  # absent, or a NaN where a parquet column has gaps
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in list(value)]


def _question_from_prompt(prompt: Any) -> str | None:
    """The question at the end of a Search-R1 chat prompt (``… Question: <question>``)."""
    messages = [] if prompt is None else list(prompt)
    for message in reversed(messages):
        question = read_question(str(message.get("content", "")))
        if question:
            return question
    return None
