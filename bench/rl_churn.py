"""What RL changes question by question: the paired gain of each run over its starting point, with its
bootstrap interval, and whether the questions it wins (or loses) are the same ones from run to run.

Each ``LABEL=BEFORE:AFTER`` names two trajectory files of the same questions (the pipeline's
``test.jsonl`` of a cold start and of the RL policy trained from it, or ``dgpo-agent eval``'s); pairs
that share a label (one per seed) form a group. Per pair: the gain, its 95% interval
(``evals.paired``) and the questions right only after RL (won) or only before (lost). Per group: how
many of its runs won each question, which separates a gain RL makes on the same questions every time
from churn that lands on different questions in every run.

    python bench/rl_churn.py --out bench/results/rl_churn.json \\
        test=runs/kd-s0/cold_start/kd/test.jsonl:runs/kd-s0/rl/dgpo/final/test.jsonl \\
        test=runs/kd-s1/cold_start/kd/test.jsonl:runs/kd-s1/rl/dgpo/final/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

from dgpo_agent.evals.paired import paired_gain, question_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="LABEL=BEFORE:AFTER, repeatable; pairs of one label are one group")
    parser.add_argument("--out", type=Path, default=Path("bench/results/rl_churn.json"))
    args = parser.parse_args()

    groups: dict[str, list[dict]] = {}
    for spec in args.pairs:
        label, _, files = spec.partition("=")
        before, _, after = files.partition(":")
        for path in (before, after):
            if not Path(path).is_file():
                raise SystemExit(f"no trajectories at {path}: pass LABEL=BEFORE:AFTER with two trajectory files")
        groups.setdefault(label, []).append(churn(Path(before), Path(after)))
    summary = {label: summarise(runs) for label, runs in groups.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"groups": summary, "pairs": args.pairs}, indent=2) + "\n")
    print("| group | runs | n | gain per run (95% interval) | won / lost per run | questions won in k runs (k = 1, 2, …) | lost in k runs |")
    print("|---|---|---|---|---|---|---|")
    for label, s in summary.items():
        gains = "; ".join(f"{r['gain']:+.3f} ({r['low']:+.3f} to {r['high']:+.3f})" for r in s["runs"])
        moved = ", ".join(f"{r['better']}/{r['worse']}" for r in s["runs"])
        print(f"| {label} | {len(s['runs'])} | {s['n']} | {gains} | {moved} | {s['won_in_k_runs']} | {s['lost_in_k_runs']} |")


def churn(before: Path, after: Path) -> dict:
    """One run's paired gain and the ids of the questions it won and lost."""
    first = question_scores(before)
    second = question_scores(after, first.keys())
    return {
        **paired_gain(first, second),
        "won": sorted(q for q in first if second[q] > first[q]),
        "lost": sorted(q for q in first if second[q] < first[q]),
    }


def summarise(runs: list[dict]) -> dict:
    """A group's runs, its mean gain, and how many questions were won (and lost) in exactly k runs."""
    won, lost = Counter(q for r in runs for q in r["won"]), Counter(q for r in runs for q in r["lost"])
    gains = [r["gain"] for r in runs]
    return {
        "n": runs[0]["n"],
        "gain_mean": round(statistics.mean(gains), 4),
        "gain_std": round(statistics.stdev(gains), 4) if len(gains) > 1 else 0.0,
        "won_in_k_runs": [sum(1 for c in won.values() if c == k) for k in range(1, len(runs) + 1)],
        "lost_in_k_runs": [sum(1 for c in lost.values() if c == k) for k in range(1, len(runs) + 1)],
        "runs": [{k: v for k, v in r.items() if k not in ("won", "lost")} for r in runs],
    }


if __name__ == "__main__":
    main()
