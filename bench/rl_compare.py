"""DGPO against its baselines on the tiny world, over seeds: the paper's results table as mean ± std.

From one run prepared through the cold start (`dgpo-agent train --stop-after cold-start`), every
seed gets its own copy of the run (hard links: nothing is retrained) and runs the pipeline's ``rl``
and ``results`` stages with ``rl.seed`` = that seed: DGPO and the teacher-free baselines (PPO, GRPO,
from the cold start; add ``ppo-from-base`` to start one from the base student). The cold start and
the teacher are shared by all seeds, so the spread is RL's own. Test EM is greedy, through the graph,
on the entity-disjoint test split, per ``data_source``.

    dgpo-agent train --stop-after cold-start
    python bench/rl_compare.py --run runs/tiny --seeds 0 1 --methods dgpo ppo grpo

Beside the JSON it writes the training curves of every method over the seeds (reward, dev EM, KL to
the teacher, entropy, response length, searches) as a PNG of the same name; ``--plot-only`` redraws
that from the seeds' logs under ``--work`` without training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

SHARED = ("world", "oracle", "tokenizer", "base", "teacher", "tgo", "cold_start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a run prepared through the cold start")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=["dgpo", "ppo", "grpo"], help="the first is rl.method, the rest baselines")
    parser.add_argument("--config", type=Path, help="YAML overrides (e.g. rl.steps), as for dgpo-agent train")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-rl"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/rl_compare.json"))
    parser.add_argument("--plot-only", action="store_true", help="only redraw the curves from the logs under --work")
    args = parser.parse_args()

    if args.plot_only:
        print(plot(args.work, args.out.with_suffix(".png")))
        return
    runs = {seed: run_seed(args, seed) for seed in args.seeds}
    table = summarise(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "runs": runs, "table": table}, indent=2) + "\n")
    print("\n".join(markdown(table)))
    print(plot(args.work, args.out.with_suffix(".png")))


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """The rl and results stages of one seed's copy of the prepared run; returns its summaries."""
    from dgpo_agent.training.config import load_config
    from dgpo_agent.training.pipeline import run_pipeline

    work = args.work / f"seed{seed}"
    cfg = load_config(json.loads((args.run / "config.json").read_text())["preset"], args.config, out=work)
    cfg.rl.method, cfg.rl.baselines, cfg.rl.seed = args.methods[0], args.methods[1:], seed
    link_prepared(args.run, work)
    summaries = run_pipeline(cfg)
    return {"rl": summaries["rl"], "results": summaries["results"]}


def link_prepared(run: Path, work: Path) -> None:
    """Hard-link the prepared stages (outputs and cache markers) into ``work``, once."""
    if (work / ".stages").is_dir():
        return
    (work / ".stages").mkdir(parents=True)
    for name in SHARED:
        if (run / name).exists():
            shutil.copytree(run / name, work / name, copy_function=_link)
    for marker in (run / ".stages").iterdir():
        if marker.stem not in ("rl", "results"):
            shutil.copy(marker, work / ".stages" / marker.name)  # copies: the pipeline rewrites markers


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


def plot(work: Path, path: Path) -> Path:
    """Every method's RL curves over the seeds under ``work`` (``seed*/rl/<method>/metrics.jsonl``)."""
    from dgpo_agent.training.callbacks import METRICS, read_log
    from dgpo_agent.training.plots import plot_rl_seeds

    logs: dict[str, list[list[dict]]] = {}
    for log in sorted(work.glob(f"seed*/rl/*/{METRICS}")):
        logs.setdefault(log.parent.name, []).append(read_log(log))
    if not logs:
        raise SystemExit(f"no RL logs under {work}/seed*/rl/: run the benchmark first, or pass its --work")
    return plot_rl_seeds(logs, path, f"RL methods over seeds: mean and range ({work})")


def summarise(runs: dict[int, dict]) -> dict[str, dict[str, list[float]]]:
    """Model → data source → the test EM of each seed."""
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs.values():
        for model, by_source in run["results"].items():
            for source, em in by_source.items():
                table.setdefault(model, {}).setdefault(source, []).append(em)
    return table


def markdown(table: dict[str, dict[str, list[float]]]) -> list[str]:
    """Models × data sources, mean ± std over seeds (std 0 for models the seeds share)."""
    sources = sorted({s for row in table.values() for s in row} - {"all"}) + ["all"]
    lines = ["| model | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for model, row in table.items():
        cells = [_mean_std(row[s]) if s in row else "–" for s in sources]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


if __name__ == "__main__":
    main()
