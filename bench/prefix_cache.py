"""Multi-turn rollouts with transformers: what the KV cache across turns buys.

Three arms run the same greedy batched rollouts (``run_batch``, the shipped teacher, real retrieval)
over the world's test questions, alternating, ``--repeats`` times each, keeping the fastest:

- ``transformers``: transformers' own ``DynamicCache`` and every turn's whole context re-encoded
  (what the backend did before);
- ``growing``: the cache that grows in place, whole context re-encoded;
- ``prefix``: growing cache plus prefix caching (each turn encodes only its new tokens): the default.

    dgpo-agent train --stop-after teacher
    python bench/prefix_cache.py --run runs/tiny --n 128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

ARMS = ("transformers", "growing", "prefix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a run with world/, tokenizer/ and teacher/")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the run's teacher)")
    parser.add_argument("--n", type=int, default=128, help="test questions (one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/prefix_cache.json"))
    args = parser.parse_args()

    import torch
    from transformers import DynamicCache

    from dgpo_agent.backends.base import SamplingParams
    from dgpo_agent.backends.transformers import TransformersPolicy
    from dgpo_agent.rollout import AgentConfig, run_batch, token_trajectory
    from dgpo_agent.store import ChromaStore
    from dgpo_agent.training.run import RunDir
    from dgpo_agent.world import load_questions

    torch.set_num_threads(1)  # a shared 2-core machine: one thread is steadier (see bench/README)
    run = RunDir(args.run)
    model = TransformersPolicy.from_pretrained(str(args.model or run.teacher), device="cpu")
    store = ChromaStore(run.world.store, must_exist=True)
    questions = [r["question"] for r in load_questions(run.world.questions("test"))[: args.n]]
    config = AgentConfig(sampling=SamplingParams(max_new_tokens=args.max_new_tokens))

    def rollout(arm: str) -> tuple[float, list]:
        policy = TransformersPolicy(model.model, model.tokenizer, prefix_caching=arm == "prefix")
        patch = mock.patch("dgpo_agent.backends.transformers._empty_cache", lambda m: DynamicCache()) if arm == "transformers" else mock.MagicMock()
        with patch:
            start = time.perf_counter()
            states = run_batch(questions, policy, store, config)
            return time.perf_counter() - start, states

    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    trajectories = {}
    for _ in range(args.repeats):
        for arm in ARMS:
            wall, states = rollout(arm)
            seconds[arm].append(round(wall, 2))
            trajectories[arm] = [token_trajectory(s).response_ids for s in states]
    best = {arm: min(times) for arm, times in seconds.items()}
    tokens = sum(len(t) for t in trajectories["prefix"])
    result = {
        "questions": len(questions),
        "response_tokens": tokens,
        "seconds": seconds,
        "speedup_vs_transformers": {arm: round(best["transformers"] / best[arm], 2) for arm in ARMS},
        "identical_to_transformers": {
            arm: sum(a == b for a, b in zip(trajectories[arm], trajectories["transformers"])) for arm in ARMS
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
