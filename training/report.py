"""The run's report card (``report.md``), rewritten after every pipeline run from stage summaries:
the test EM of every model in the paper's layout (models × data sources), the oracle's full metrics,
each trained model's paired EM gain over its starting point, the teacher's TGO yield, the cold start's
EM curve, and each stage's summary."""

from __future__ import annotations

import json
from pathlib import Path

from dgpo_agent.evals.report import comparison_table
from dgpo_agent.training.plots import plot_curves
from dgpo_agent.training.run import RunDir


def model_rows(summaries: dict[str, dict], oracle_test: dict | None) -> dict[str, dict]:
    """Test metrics per data source of each model the run evaluated, in pipeline order."""
    rows = {}
    if oracle_test:
        rows["oracle (ceiling)"] = oracle_test
    if "base" in summaries:
        rows["base student"] = summaries["base"]["student_test"]
    if "teacher" in summaries:
        rows["teacher"] = summaries["teacher"]["test"]
    for method, result in summaries.get("cold-start", {}).items():
        rows[f"cold start ({method})"] = result["test"]
    for method, result in summaries.get("rl", {}).items():
        rows[method] = result["test"]
    return rows


def write_report(run: RunDir, summaries: dict[str, dict]) -> Path:
    """Write ``report.md`` (and ``curves.png`` when something was trained)."""
    lines = [f"# dgpo-agent run report: {run.root}", ""]
    metrics = run.oracle_metrics
    # Only the world's oracle is a ceiling: elsewhere the demonstrator knows the answers and skips test.
    oracle_test = json.loads(metrics.read_text()).get("test") if "oracle" in summaries and metrics.is_file() else None
    rows = model_rows(summaries, oracle_test)
    if len(rows) > 1 or (rows and not oracle_test):
        label = summaries.get("world", {}).get("test_label", "the world's entity-disjoint test split")
        lines += [f"## Test EM (greedy, {label}, through the graph)", "", *em_table(rows), ""]
        lines += ["## How each model searched and answered (all test questions)", "", *behaviour_table(rows), ""]
    if "results" in summaries and (gains := paired_gains(run)):
        lines += ["## Gains over each model's starting point (paired over the test questions)", "", *comparison_table(gains), ""]
    if oracle_test:
        lines += ["## Oracle (the ceiling) on the test split", "", *metrics_table(oracle_test), ""]
    if "tgo" in summaries:
        lines += ["## Teacher outputs (TGO) yield", "", *metrics_table(_as_table(summaries["tgo"])), ""]
    if "results" in summaries:
        arc = (run.arc / "report.md").relative_to(run.root)
        lines += [f"The ARC report of these models (hit ratio, evidence recall, EM given the gold evidence, thinking): [{arc}]({arc})", ""]
    if plot_curves(run):
        lines += ["## Curves", "", f"![training curves]({run.curves.name})", ""]
    for stage, summary in summaries.items():
        lines += [f"## {stage}", "", "```json", json.dumps(summary, indent=2, sort_keys=True), "```", ""]
    run.report.write_text("\n".join(lines))
    return run.report


def paired_gains(run: RunDir) -> list[dict]:
    """The results stage's paired EM gains of each trained model over its starting point
    (``arc/metrics.json``; none for a pair where one of the two has no test trajectories)."""
    path = run.arc / "metrics.json"
    return json.loads(path.read_text()).get("comparisons", []) if path.is_file() else []


def em_table(rows: dict[str, dict]) -> list[str]:
    """Models × data sources (``all`` last), EM to three decimals, and the questions scored."""
    sources = sorted({s for m in rows.values() for s in m} - {"all"}) + ["all"]
    table = ["| model | " + " | ".join(sources) + " | n |", "|---|" + "---|" * (len(sources) + 1)]
    for name, by_source in rows.items():
        cells = [f"{by_source[s]['em']:.3f}" if s in by_source else "–" for s in sources]
        table.append(f"| {name} | " + " | ".join(cells) + f" | {by_source.get('all', {}).get('n', '–')} |")
    return table


BEHAVIOUR = {"em": "EM", "hit": "hit ratio", "invalid": "invalid-action rate", "searches": "searches", "answered": "answered"}


def behaviour_table(rows: dict[str, dict]) -> list[str]:
    """Models × the headline behaviour metrics over all questions ("–" where a model's summary lacks one)."""
    table = ["| model | " + " | ".join(BEHAVIOUR.values()) + " |", "|---|" + "---|" * len(BEHAVIOUR)]
    for name, by_source in rows.items():
        overall = by_source.get("all", {})
        table.append(f"| {name} | " + " | ".join(_number(overall[k]) if overall.get(k) is not None else "–" for k in BEHAVIOUR) + " |")
    return table


def metrics_table(by_source: dict[str, dict[str, float]]) -> list[str]:
    """A Markdown table: one row per data source, one column per metric."""
    keys = sorted({k for m in by_source.values() for k in m} - {"n"})
    rows = ["| data_source | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for source, m in by_source.items():
        rows.append(f"| {source} | {m.get('n', '')} | " + " | ".join(_number(m.get(k, float("nan"))) for k in keys) + " |")
    return rows


def _number(value: float) -> str:
    """Counts as integers, rates and means to three decimals."""
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _as_table(tgo: dict[str, dict]) -> dict[str, dict]:
    return {source: {"n": m["samples"], **{k: v for k, v in m.items() if k != "samples"}} for source, m in tgo.items()}
