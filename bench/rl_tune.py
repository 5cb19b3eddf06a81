"""Dev-only RL tuning: one RL method from a prepared run's cold start under the settings you name,
scored on dev questions only, so RL settings for a new world or scale are chosen without ever
looking at the test split. Each setting trains in its own directory (resumable) and its dev-EM
curve, rollout reward and response length join ``--out`` under its name, beside the starting
policy's dev EM.

    dgpo-agent train --stop-after cold-start
    python bench/rl_tune.py --run runs/tiny --name t07 rl.temperature=0.7
    python bench/rl_tune.py --run runs/tiny --name t07-b005 rl.temperature=0.7 rl.beta=0.005
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a run prepared through the cold start")
    parser.add_argument("--name", required=True, help="this setting's name in --out")
    parser.add_argument("--method", default="dgpo", help="dgpo, ppo or grpo (or a -from-base variant)")
    parser.add_argument("--dev", type=int, default=300, help="dev questions per evaluation")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-tune"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/rl_tune.json"))
    parser.add_argument("settings", nargs="*", help="section.field=value overrides, e.g. rl.beta=0.005")
    args = parser.parse_args()

    from dgpo_agent.errors import DGPOError
    from dgpo_agent.training import stages
    from dgpo_agent.training.callbacks import read_log
    from dgpo_agent.training.config import load_config
    from dgpo_agent.training.run import Run, RunDir
    from dgpo_agent.training.callbacks import METRICS

    overrides = settings(args.settings)
    overrides.setdefault("rl", {})["eval_questions"] = args.dev
    try:
        cfg = load_config(json.loads(RunDir(args.run).config.read_text())["preset"], out=args.run, overrides=overrides)
    except DGPOError as err:
        raise SystemExit(f"error: {err}") from None
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    run = Run(cfg)
    start = stages.train_rl_method(run, args.method, args.work / args.name)
    if results.get("start", {}).get("key") != [str(start), args.dev]:
        score = stages.dev_em(run, run.student_tokenizer, args.dev)
        results["start"] = {"key": [str(start), args.dev], "dev_em": score(stages.load_model(start).eval())["em"]}
    log = read_log(args.work / args.name / METRICS)
    window = max(1, cfg.rl.eval_every)
    results[args.name] = {
        "method": args.method,
        "settings": args.settings,
        "rl": dataclasses.asdict(cfg.rl),
        "dev_questions": args.dev,
        "dev_em": {e["step"]: e["dev_em"] for e in log if "dev_em" in e},
        # Means over each eval window of steps: single steps see different questions and are noisy.
        **{key: window_means(log, key, window, digits) for key, digits in WINDOWED.items() if any(e.get(key) is not None for e in log)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"start": results["start"], args.name: results[args.name]["dev_em"]}))


def settings(pairs: list[str]) -> dict:
    """``section.field=value`` pairs (values read as YAML) as the nested overrides ``load_config`` takes."""
    overrides: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise SystemExit(f"error: bad setting {pair!r}: write section.field=value, e.g. rl.beta=0.005")
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    return overrides


# Logged per step, reported as means over each evaluation window: what the update did to the policy.
WINDOWED = {"reward": 3, "response_length": 1, "search_count": 2, "invalid_rate": 3, "kl_wrong": 3, "approx_kl": 5, "entropy": 3}


def window_means(log: list[dict], key: str, window: int, digits: int) -> list[float]:
    return [round(statistics.fmean(e[key] for e in log[i : i + window] if e.get(key) is not None), digits) for i in range(0, len(log), window)]


if __name__ == "__main__":
    main()
