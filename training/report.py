"""The run's report card (``report.md``), rewritten after every pipeline run from stage summaries."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(run: Path, summaries: dict[str, dict]) -> Path:
    """Write ``report.md``: a section per finished stage, with the oracle's metrics as a table."""
    lines = [f"# dgpo-agent run report: {run}", ""]
    for stage, summary in summaries.items():
        lines += [f"## {stage}", "", "```json", json.dumps(summary, indent=2, sort_keys=True), "```", ""]
    metrics = run / "oracle" / "metrics.json"
    if "oracle" in summaries and metrics.is_file():
        lines += ["## Oracle (the ceiling) on the test split", "", *metrics_table(json.loads(metrics.read_text())["test"]), ""]
    path = run / "report.md"
    path.write_text("\n".join(lines))
    return path


def metrics_table(by_source: dict[str, dict[str, float]]) -> list[str]:
    """A Markdown table: one row per data source, one column per metric."""
    keys = sorted({k for m in by_source.values() for k in m} - {"n"})
    rows = ["| data_source | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for source, m in by_source.items():
        rows.append(f"| {source} | {m['n']} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in keys) + " |")
    return rows
