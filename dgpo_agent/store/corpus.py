"""Reading JSONL corpora in the two layouts in use: wiki-18 / Search-R1 and title/text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import split_contents


def stable_id(title: str, text: str) -> str:
    """An id derived from the content, so re-reading a corpus without ids yields the same ids."""
    return hashlib.sha1(f"{title}\n{text}".encode("utf-8")).hexdigest()[:16]


def read_corpus(path: str | Path) -> Iterator[dict]:
    """Yield ``{"id", "title", "text"}`` for each record of a JSONL corpus.

    Accepts ``{"id", "contents"}`` (title on the first line of contents) and ``{"id", "title", "text"}``.
    A missing file raises at once, before anything is read, so callers fail before creating a store.
    """
    path = Path(path)
    if not path.is_file():
        raise DGPOError(
            f"corpus {path} not found: pass a JSONL file of {{id, contents}} or {{id, title, text}} records"
        )
    return _records(path)


def _records(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as lines:
        lineno = 0
        try:
            for lineno, line in enumerate(lines, 1):
                if line.strip():
                    yield _parse(line, path, lineno)
        except UnicodeDecodeError as err:
            raise DGPOError(f"{path}, after line {lineno}: not UTF-8 text ({err.reason}): convert the corpus to UTF-8") from None


def _parse(line: str, path: Path, lineno: int) -> dict:
    """One record in the common form; any malformed line names its file and line number."""
    try:
        record = json.loads(line)
        if "contents" in record:
            title, text = split_contents(record["contents"])
        else:
            title, text = str(record.get("title") or ""), record["text"]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DGPOError(
            f"{path}, line {lineno}: malformed corpus record ({type(exc).__name__}: {exc}): each line must be a JSON "
            "object with {id, contents} or {id, title, text}"
        ) from exc
    rid = record.get("id")
    return {"id": str(rid) if rid not in (None, "") else stable_id(title, text), "title": title, "text": str(text)}
