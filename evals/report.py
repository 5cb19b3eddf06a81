"""Reports of one evaluation of several models: metrics JSON, a Markdown report and PNG charts.

The Markdown follows the paper's layout: methods (rows) × data sources (columns) for EM, F1, hit ratio,
search steps and evidence recall (Tables 1 and 3), with the paired EM gains the results hold
(``evals.paired``) after EM; the evidence probes as w/o think | w/ think pairs per source (Table 2);
then every metric overall, grouped by ARC capability. Charts use matplotlib's Agg backend, imported
only here.
"""

from __future__ import annotations

import json
from pathlib import Path

from dgpo_agent.evals.metrics import CAPABILITIES, METRICS

ALL = "all"
COUNTS = ("searches", "turns", "think_words")  # not rates: printed with two decimals
ARC_CHART = {  # rates drawn in arc.png, with their axis labels
    "em": "EM", "hit": "hit ratio", "evidence_recall": "evidence recall", "em_no_think": "EM w/o think",
    "em_think": "EM w/ think", "think_rate": "think rate", "answered": "valid answer", "grounded": "grounded",
}
CAPABILITY_TITLES = {
    "answer": "Answer",
    "query_rewriting": "Query Rewriting",
    "source_referencing": "Source Referencing",
    "thinking": "Thinking",
    "behaviour": "Behaviour",
}


def write_report(results: dict, out: Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``em_by_source.png`` and ``arc.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("metrics.json", "report.md", "em_by_source.png", "arc.png")}
    paths["metrics.json"].write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    paths["report.md"].write_text(markdown(results))
    _charts(results, paths["em_by_source.png"], paths["arc.png"])
    return paths


def sources(results: dict) -> list[str]:
    """The data sources in a stable order, the overall column last."""
    return [*sorted(results["data"]["sources"]), ALL]


def markdown(results: dict) -> str:
    """The report as Markdown."""
    data, settings = results["data"], results["settings"]
    decoding = "greedy" if settings["temperature"] <= 0 else f"temperature {settings['temperature']}, top-p {settings['top_p']}"
    lines = [
        "# ARC evaluation",
        "",
        f"Data: `{data['file']}`, {data['questions']} questions "
        f"({', '.join(f'{s} {n}' for s, n in data['sources'].items())}). "
        f"Agent: {settings['max_turns']} search turns, top-{settings['top_k']}, {decoding}, "
        f"{settings['max_new_tokens']} tokens per turn. Metric definitions: docs/arc.md.",
        "",
    ]
    for title, key in (
        ("Answer: exact match", "em"),
        ("Answer: token F1", "f1"),
        ("Query Rewriting: hit ratio", "hit"),
        ("Query Rewriting: search steps", "searches"),
        ("Query Rewriting: gold-evidence recall", "evidence_recall"),
    ):
        lines += [f"## {title}", "", *_source_table(results, key), ""]
        if key == "em" and results.get("comparisons"):
            lines += ["## Answer: paired EM gains (each model against a reference, question by question)", "", *comparison_table(results["comparisons"]), ""]
    lines += ["## Source Referencing & Thinking: EM given the gold evidence", "", *_probe_table(results), ""]
    lines += ["## All metrics, overall", "", *_overall_table(results), ""]
    return "\n".join(lines)


def _source_table(results: dict, key: str) -> list[str]:
    columns = sources(results)
    rows = [[m["name"], *(_cell(m["metrics"].get(s, {}), key) for s in columns)] for m in results["models"]]
    return _table(["Method", *columns], rows)


def comparison_table(comparisons: list[dict]) -> list[str]:
    """Each paired comparison's EMs, gain and interval (``evals.paired``), and the questions that moved."""
    rows = [
        [c["model"], c["reference"], f"{c['reference_mean']:.3f} → {c['model_mean']:.3f}", f"{c['gain']:+.3f}",
         f"{c['low']:+.3f} to {c['high']:+.3f}", str(c["better"]), str(c["worse"]), str(c["n"])]
        for c in comparisons
    ]
    header = ["Method", "against", "EM", "gain", "interval", "right only here", "right only there", "n"]
    levels = sorted({f"{c['confidence']:.0%}" for c in comparisons})
    note = f"_Intervals: {', '.join(levels)} percentile bootstrap over the questions; one that holds 0 is no evidence of a difference._"
    return [*_table(header, rows), "", note]


def _probe_table(results: dict) -> list[str]:
    columns = [s for s in sources(results) if any("em_no_think" in m["metrics"].get(s, {}) for m in results["models"])]
    if not columns:
        return ["_No question in this data has gold evidence: the probes were not run._"]
    header = ["Method", *(f"{s} {mode}" for s in columns for mode in ("w/o think", "w/ think")), f"{ALL} gain"]
    rows = [
        [m["name"],
         *(_cell(m["metrics"].get(s, {}), key) for s in columns for key in ("em_no_think", "em_think")),
         _cell(m["metrics"][ALL], "think_gain")]
        for m in results["models"]
    ]
    return _table(header, rows)


def _overall_table(results: dict) -> list[str]:
    rows = [
        [CAPABILITY_TITLES[metric.capability], f"`{key}`", *(_cell(m["metrics"][ALL], key) for m in results["models"])]
        for capability in CAPABILITIES
        for key, metric in METRICS.items()
        if metric.capability == capability
    ]
    return _table(["Capability", "Metric", *(m["name"] for m in results["models"])], rows)


def _cell(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "–"
    return f"{value:.2f}" if key in COUNTS else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


# ----------------------------------------------------------------------------------------- charts


def _charts(results: dict, em_path: Path, arc_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    em_groups = sources(results)
    _grouped_bars(results, em_groups, [[m["metrics"].get(s, {}).get("em") for s in em_groups] for m in results["models"]],
                  "EM by data source", em_path)
    arc = [k for k in ARC_CHART if any(k in m["metrics"][ALL] for m in results["models"])]
    _grouped_bars(results, [ARC_CHART[k] for k in arc], [[m["metrics"][ALL].get(k) for k in arc] for m in results["models"]],
                  "ARC capabilities (all questions)", arc_path)


def _grouped_bars(results: dict, groups: list[str], values: list[list[float | None]], title: str, path: Path) -> None:
    """One bar per model in each group; a missing value draws no bar."""
    import matplotlib.pyplot as plt

    models = [m["name"] for m in results["models"]]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, len(groups) * (0.5 + 0.25 * len(models))), 4))
    for i, (name, row) in enumerate(zip(models, values, strict=True)):
        bars = [(g + (i - (len(models) - 1) / 2) * width, v) for g, v in enumerate(row) if v is not None]
        ax.bar([x for x, _ in bars], [v for _, v in bars], width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
