"""The ARC harness batched against one question at a time, on the world's test split.

Both runs go through ``evals.harness.evaluate`` with the same policy, store and settings; only the
batch size differs (``--batch-size`` questions per generation and retrieval call, against 1). The
script checks that the two metric JSONs are byte-identical and the trajectories the same, and reports
the speed-up as a ratio measured in this one run (with ``--repeats``, the runs alternate and the
fastest of each counts, so load from other jobs on a shared machine skews the ratio less).

    python bench/eval_batched.py --world runs/tiny/world                      # the scripted oracle
    python bench/eval_batched.py --world runs/tiny/world --model tiny-random --n 64 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from results_file import add_result  # bench/, beside this script

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("runs/tiny/world"), help="world directory (dgpo-agent world)")
    parser.add_argument("--model", default="oracle", help="'oracle', 'tiny-random' (tests/models.py) or a checkpoint")
    parser.add_argument("--n", type=int, default=600, help="test questions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two runs this often; keep the fastest")
    parser.add_argument("--out", type=Path, default=Path("bench/results/eval_batched.json"))
    args = parser.parse_args()

    from dgpo_agent.backends.base import SamplingParams
    from dgpo_agent.evals.harness import EvalConfig, evaluate, metrics
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.store import open_retriever
    from dgpo_agent.world import WorldDir, load_questions

    world = WorldDir(args.world)
    records = load_questions(world.questions("test"))[: args.n]
    retriever = open_retriever(str(world.store))
    policy = _policy(args.model)
    agent = AgentConfig(max_turns=args.max_turns, sampling=SamplingParams(max_new_tokens=args.max_new_tokens))
    times: dict[str, list[float]] = {"sequential": [], "batched": []}
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        evaluate(records[:2], policy, retriever, EvalConfig(agent), Path(tmp) / "warm-up.jsonl")  # load models once
        for repeat in range(args.repeats):
            modes = [("sequential", 1), ("batched", args.batch_size)]
            for name, batch_size in modes if repeat % 2 == 0 else modes[::-1]:
                path = Path(tmp) / f"{name}-{repeat}.jsonl"
                start = time.perf_counter()
                rows[name] = evaluate(records, policy, retriever, EvalConfig(agent, batch_size), path)
                times[name].append(time.perf_counter() - start)
    t_seq, t_bat = min(times["sequential"]), min(times["batched"])
    seq, bat = rows["sequential"], rows["batched"]
    result = {
        "model": args.model,
        "questions": len(records),
        "batch_size": args.batch_size,
        "max_turns": args.max_turns,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "sequential_s": round(t_seq, 2),
        "batched_s": round(t_bat, 2),
        "speedup": round(t_seq / t_bat, 2),
        "identical_metrics_json": _json(metrics(seq)) == _json(metrics(bat)),
        "identical_trajectories": sum(a == b for a, b in zip(seq, bat, strict=True)),
        "identical_except_retrieval_scores": sum(_unscored(a) == _unscored(b) for a, b in zip(seq, bat, strict=True)),
    }
    add_result(args.out, args.model, result)
    print(json.dumps(result, indent=2))


def _policy(model: str):
    """The policy to time: a random tiny Qwen2 (batched generation on CPU), or what ``resolve_policy`` loads."""
    if model != "tiny-random":
        from dgpo_agent.agent import resolve_policy

        return resolve_policy(model)
    sys.path.insert(0, str(ROOT))
    from dgpo_agent.backends.transformers import TransformersPolicy
    from tests.models import tiny_qwen2, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return TransformersPolicy(tiny_qwen2(tokenizer), tokenizer)


def _json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def _unscored(row: dict) -> list[dict]:
    """Steps without retrieval scores, which differ by float noise between single and batched query
    embedding (and so, rarely, in their rounded 4th decimal); metrics never read them."""
    return [{**s, "docs": [d["id"] for d in s["docs"]]} if "docs" in s else s for s in row["steps"]]


if __name__ == "__main__":
    main()
