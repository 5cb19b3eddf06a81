"""Does averaging RL's weights beat its last step? RL at the default trains at a constant learning
rate, so its last weights carry the noise of its last updates; the usual remedies cost no training:
the mean of the last checkpoints (tail averaging, as SWA), and a point on the line from the cold
start through the policy, between them (WiSE-FT) or beyond the policy (extrapolation, as ExPO). This
scores each on dev questions, greedy, through the graph, beside the policy itself.

The mean of the last k checkpoints needs k of them kept: train with ``rl: {save_every: 5,
save_total_limit: null}`` (the default keeps the last two, 10 steps apart).

    python bench/weight_averaging.py --run runs/tiny --last 2 --alphas 0.5 1.5 2.0
    python bench/weight_averaging.py --run runs/bench-rl/dgpo/seed1 --last 2 4 --out bench/results/rl_weight_averaging.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results_file import add_result  # bench/, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a run whose RL stage has finished")
    parser.add_argument("--method", default="dgpo", help="the RL method of the run to look at")
    parser.add_argument("--last", type=int, nargs="*", default=[2], help="mean of the last k kept checkpoints, for each k")
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.5, 1.5], help="cold start + α·(policy − cold start), for each α")
    parser.add_argument("--questions", type=int, help="dev questions to score on (default: all)")
    parser.add_argument("--out", type=Path, help="add this run's result to a JSON file, under its path")
    args = parser.parse_args()

    from dgpo_agent.errors import DGPOError

    try:
        row = compare(args.run, args.method, args.last, args.alphas, args.questions)
    except DGPOError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(row, indent=2))
    if args.out:
        add_result(args.out, str(args.run), row)


def compare(run_dir: Path, method: str, last: list[int], alphas: list[float], questions: int | None) -> dict:
    """Dev EM of the cold start, the policy and each averaged or interpolated set of weights."""
    from safetensors.torch import load_file

    from dgpo_agent.errors import DGPOError
    from dgpo_agent.training import stages
    from dgpo_agent.training.config import PipelineConfig, build
    from dgpo_agent.training.rl import checkpoints
    from dgpo_agent.training.run import Run, RunDir

    folder = RunDir(run_dir)
    policy_dir = folder.policy(method)
    if not (folder.config.is_file() and stages.finished(policy_dir)):
        raise DGPOError(f"{run_dir} has no finished {method} RL stage: run `dgpo-agent train --out {run_dir}` first")
    kept = checkpoints(folder.rl(method))  # complete ones, oldest first
    if max(last, default=0) > len(kept):
        raise DGPOError(f"{run_dir} keeps {len(kept)} checkpoints, fewer than --last {max(last)}: train with rl.save_total_limit: null")
    run = Run(build(PipelineConfig, json.loads(folder.config.read_text())))
    score = stages.dev_em(run, run.student_tokenizer, questions)
    model = stages.load_model(policy_dir)
    policy = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = stages.load_model(stages.rl_start(run, method)).state_dict()

    def em(weights: dict) -> float:
        model.load_state_dict(weights, strict=False)  # tied embeddings are saved once, under one name
        return round(score(model)["em"], 4)

    row = {"start": em(start), "policy": em(policy)}
    for k in last:
        tails = [load_file(path / "model.safetensors") for path in kept[-k:]]  # the policy's (model_1: the critic's)
        row[f"mean of last {k}"] = em({name: sum(t[name] for t in tails) / k for name in tails[0]})
    for alpha in alphas:
        row[f"alpha {alpha:g}"] = em({name: start[name] + alpha * (policy[name] - start[name]) for name in policy})
    return {"checkpoints": [p.name for p in kept], "dev_em": row}


if __name__ == "__main__":
    main()
