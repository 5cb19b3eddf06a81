"""The bench's JSON result files that gather one entry per run (or model) across invocations."""

from __future__ import annotations

import json
from pathlib import Path


def add_result(path: Path, key: str, result: dict) -> None:
    """Set ``key``'s entry in the JSON file at ``path`` to ``result``, keeping every other entry."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[key] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
