"""RL methods and ablations on the tiny world over seeds: the paper's results table as mean ± std.

From one run prepared through the cold start (`dgpo-agent train --stop-after cold-start`), every arm
and seed gets its own copy of the run (hard links: nothing is retrained) and runs the pipeline's
``rl`` and ``results`` stages with ``rl.seed`` = that seed. An arm is an RL method (``dgpo``, ``ppo``,
``grpo``, ``gkd``, optionally ``-from-base``) with optional ``rl`` settings of its own, so ablations
(KL on all rollouts, each form of the teacher's term) are arms too. The cold start and the teacher
are shared by every arm and seed, so the spread is RL's own. Test EM is greedy, through the graph, on
the entity-disjoint test split, per ``data_source``; each arm's gap to the first arm is paired by seed.
Every arm's config is built and checked before anything trains, so a bad setting in the last arm
fails at once; ``--arms`` with ``--arms-file`` runs only the named arms of the file.

    dgpo-agent train --stop-after cold-start
    python bench/rl_compare.py --run runs/tiny --seeds 0 1 2 --arms dgpo ppo grpo
    python bench/rl_compare.py --run runs/tiny --seeds 0 1 2 --arms-file bench/arms/kl_on.yaml --out bench/results/rl_kl_on.json
    python bench/rl_compare.py --run runs/tiny --seeds 0 --arms-file bench/arms/from_base_hour.yaml --arms gkd-from-base-forward-60

Beside the JSON it writes the training curves of every arm over the seeds (reward, dev EM, KL to the
teacher, entropy, response length, searches) as a PNG of the same name; ``--plot-only`` redraws that
from the logs under ``--work`` without training. Seeds run as separate processes (one per core) write
one JSON each; ``--merge`` builds the table over all of them:

    python bench/rl_compare.py --merge seed0.json seed1.json seed2.json --out bench/results/rl_kl_on.json --work runs/bench-rl
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.run import RunDir

if TYPE_CHECKING:
    from dgpo_agent.training.config import PipelineConfig

SHARED = ("world", "index", "oracle", "tokenizer", "base", "teacher", "tgo", "cold-start")  # the prepared stages every arm reuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a run prepared through the cold start")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", help="RL methods, each an arm with the run's settings (default dgpo ppo grpo); with --arms-file, which of its arms to run; with --merge, which arms to keep")
    parser.add_argument("--arms-file", type=Path, help="YAML: arm name -> {method, rl: {settings}}")
    parser.add_argument("--config", type=Path, help="YAML overrides every arm shares (e.g. rl.max_steps), as for dgpo-agent train")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-rl"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/rl_compare.json"))
    parser.add_argument("--plot-only", action="store_true", help="only redraw the curves from the logs under --work")
    parser.add_argument("--merge", type=Path, nargs="+", help="only build the table over these earlier results (e.g. one per seed) and redraw the curves")
    args = parser.parse_args()

    try:
        if args.merge:
            arms, runs = merge_results(args.merge, args.arms)
            report(args.out, sorted({seed for seeds in runs.values() for seed in seeds}), arms, runs, args.work)
            return
        arms = select_arms(args.arms_file, args.arms)
        if args.plot_only:
            print(plot(args.work, arms, args.out.with_suffix(".png")))
            return
        preset = prepared_preset(args.run)
        configs = {
            arm: {seed: arm_config(preset, args.config, args.work, arm, spec, seed) for seed in args.seeds}
            for arm, spec in arms.items()
        }
    except DGPOError as err:
        raise SystemExit(f"error: {err}") from None
    runs = {arm: {seed: run_arm(args.run, cfg) for seed, cfg in by_seed.items()} for arm, by_seed in configs.items()}
    report(args.out, args.seeds, arms, runs, args.work)


def report(out: Path, seeds: list[int], arms: dict[str, dict], runs: dict[str, dict[int, dict]], work: Path) -> None:
    """Write the runs, their table and paired gaps as JSON, print them, and draw the curves beside."""
    table = summarise(runs, arms)
    gaps = paired_gaps(runs, arms, next(iter(arms)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": seeds, "arms": arms, "runs": runs, "table": table, "gaps": gaps}, indent=2) + "\n")
    print("\n".join(markdown(table)))
    print("\n".join(f"{arm} − {next(iter(arms))}: {_mean_std(values)} (per seed {values})" for arm, values in gaps.items()))
    print(plot(work, arms, out.with_suffix(".png")))


def merge_results(paths: list[Path], names: list[str] | None = None) -> tuple[dict[str, dict], dict[str, dict[int, dict]]]:
    """The arms and runs of several results files, in the order first met (or only the named arms, in
    the order named); an arm must mean the same settings in every file, and each run come from one file."""
    arms: dict[str, dict] = {}
    runs: dict[str, dict[int, dict]] = {}
    for path in paths:
        try:
            result = json.loads(path.read_text())
            found_arms, found_runs = result["arms"], result["runs"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DGPOError(f"{path} is not an rl_compare results file ({err}): pass the JSON files its runs wrote") from None
        for arm, spec in found_arms.items():
            if names and arm not in names:
                continue
            if arms.setdefault(arm, spec) != spec:
                raise DGPOError(f"arm {arm!r} has other settings in {path} than in an earlier file: merge only runs of the same arms")
            for seed, run in found_runs.get(arm, {}).items():
                if int(seed) in runs.setdefault(arm, {}):
                    raise DGPOError(f"arm {arm!r}, seed {seed} is in {path} and in an earlier file: pass each run once")
                runs[arm][int(seed)] = run
    unknown = sorted(set(names or []) - set(arms))
    if unknown:
        raise DGPOError(f"no arm {', '.join(unknown)} in the merged files")
    order = names or list(arms)
    return {name: arms[name] for name in order}, {name: runs[name] for name in order}


def select_arms(path: Path | None, names: list[str] | None) -> dict[str, dict]:
    """The arms to run: the named methods, or an arms file's arms (only the named ones, if any)."""
    if path is None:
        return {name: {"method": name} for name in names or ["dgpo", "ppo", "grpo"]}
    arms = read_arms(path)
    unknown = sorted(set(names or []) - set(arms))
    if unknown:
        raise DGPOError(f"no arm {', '.join(unknown)} in {path}: choose among {', '.join(arms)}")
    return {name: arms[name] for name in names} if names else arms


def read_arms(path: Path) -> dict[str, dict]:
    """An arms file: arm name -> {method, rl: {settings}}."""
    from dgpo_agent.training.config import read_yaml

    arms = read_yaml(path, "--arms-file")
    for name, spec in arms.items():
        if not isinstance(spec, dict) or "method" not in spec or set(spec) - {"method", "rl"}:
            raise DGPOError(f"arm {name!r} in {path} must be {{method: NAME, rl: {{settings}}}}")
    return arms


def prepared_preset(run: Path) -> str:
    """The preset of a run prepared through the cold start, or a one-line error saying how to prepare it."""
    prepared = RunDir(run)
    if not prepared.marker("cold-start").is_file():
        raise DGPOError(f"{run} is not prepared through the cold start: run `dgpo-agent train --out {run} --stop-after cold-start` first")
    return json.loads(prepared.config.read_text())["preset"]


def arm_config(preset: str, config: Path | None, work: Path, arm: str, spec: dict, seed: int) -> PipelineConfig:
    """One arm's and seed's pipeline config, checked like any run's: a bad arm fails before anything trains."""
    from dgpo_agent.training.config import load_config

    overrides = {"rl": {**spec.get("rl", {}), "method": spec["method"], "baselines": [], "seed": seed}}
    return load_config(preset, config, out=work / arm / f"seed{seed}", overrides=overrides)


def run_arm(run: Path, cfg: PipelineConfig) -> dict:
    """The rl and results stages of one arm's and seed's copy of the prepared run; returns their summaries."""
    from dgpo_agent.training.pipeline import run_pipeline

    link_prepared(run, Path(cfg.out))
    summaries = run_pipeline(cfg)
    rl = summaries["rl"][cfg.rl.method]
    return {"rl": {k: rl[k] for k in ("start", "train", "curve")}, "results": summaries["results"]}


def link_prepared(run: Path, work: Path) -> None:
    """Hard-link the prepared stages (outputs and cache markers) into ``work``, once."""
    prepared, copy = RunDir(run), RunDir(work)
    if copy.stages.is_dir():
        return
    copy.stages.mkdir(parents=True)
    for stage in SHARED:
        for source, dest in zip(prepared.outputs(stage), copy.outputs(stage), strict=True):
            if source.exists():
                shutil.copytree(source, dest, copy_function=_link)
        for marker in (prepared.marker(stage), prepared.started(stage)):
            if marker.is_file():
                shutil.copy(marker, copy.stages / marker.name)  # copies: the pipeline rewrites markers


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


def plot(work: Path, arms: dict[str, dict], path: Path) -> Path:
    """Every arm's RL curves over its seeds under ``work``."""
    from dgpo_agent.training.callbacks import METRICS, read_log
    from dgpo_agent.training.plots import plot_rl_seeds

    logs = {
        arm: [read_log(RunDir(seed).rl(spec["method"]) / METRICS) for seed in sorted((work / arm).glob("seed*"))]
        for arm, spec in arms.items()
    }
    logs = {arm: [log for log in seeds if log] for arm, seeds in logs.items() if any(seeds)}
    if not logs:
        raise SystemExit(f"no RL logs under {work}/<arm>/seed*/: run the benchmark first, or pass its --work")
    return plot_rl_seeds(logs, path, f"RL arms over seeds: mean and range ({work})")


def summarise(runs: dict[str, dict[int, dict]], arms: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    """Model → data source → the test EM of each seed: every arm's policy, and once the models every arm
    shares (the base student, the teacher, the cold start)."""
    shared = {model: by_source for seeds in runs.values() for run in seeds.values() for model, by_source in run["results"].items()}
    table = {model: {s: [em] for s, em in by_source.items()} for model, by_source in shared.items() if model not in _methods(arms)}
    for arm, seeds in runs.items():
        for run in seeds.values():
            for source, em in run["results"][arms[arm]["method"]].items():
                table.setdefault(arm, {}).setdefault(source, []).append(em)
    return table


def paired_gaps(runs: dict[str, dict[int, dict]], arms: dict[str, dict], reference: str) -> dict[str, list[float]]:
    """Each arm's test EM minus the reference arm's, seed by seed."""

    def em(arm: str, seed: int) -> float:
        return runs[arm][seed]["results"][arms[arm]["method"]]["all"]

    return {arm: [round(em(arm, seed) - em(reference, seed), 4) for seed in seeds if seed in runs[reference]] for arm, seeds in runs.items() if arm != reference}


def _methods(arms: dict[str, dict]) -> set[str]:
    return {spec["method"] for spec in arms.values()}


def markdown(table: dict[str, dict[str, list[float]]]) -> list[str]:
    """Models × data sources, mean ± std over seeds (one value for models the seeds share)."""
    sources = sorted({s for row in table.values() for s in row} - {"all"}) + ["all"]
    lines = ["| model | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for model, row in table.items():
        cells = [_mean_std(row[s]) if s in row else "–" for s in sources]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _mean_std(values: list[float]) -> str:
    """Mean ± std, or the value alone where there is one: a single seed has no spread to show."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


if __name__ == "__main__":
    main()
