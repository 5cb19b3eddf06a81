"""Batched rollouts against one question at a time through the graph, on the world's test split.

Both runs use the same policy, store and settings; the script checks that they give the same answers
and reports the speed-up as a ratio measured in this one run.

    python bench/batched_vs_sequential.py --world runs/tiny/world --n 256 [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("runs/tiny/world"), help="world directory (dgpo-agent world)")
    parser.add_argument("--store", type=Path, default=None, help="Chroma store (default WORLD/chroma)")
    parser.add_argument("--model", default="oracle", help="'oracle' or a checkpoint / hub name")
    parser.add_argument("--n", type=int, default=256, help="test questions")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results/batched_vs_sequential.json"))
    args = parser.parse_args()

    from dgpo_agent.agent import CompactSearchAgent
    from dgpo_agent.world import WorldDir, load_questions

    world = WorldDir(args.world)
    records = load_questions(world.questions("test"))[: args.n]
    questions = [r["question"] for r in records]
    agent = CompactSearchAgent(args.model, str(args.store or world.store), max_new_tokens=args.max_new_tokens)
    agent.invoke(questions[0])  # warm up: load the embedder and the model once, outside the timings

    start = time.perf_counter()
    sequential = [agent.invoke(q) for q in questions]
    t_sequential = time.perf_counter() - start
    start = time.perf_counter()
    batched = agent.batch(questions)
    t_batched = time.perf_counter() - start

    same_answers = sum(a["answer"] == b["answer"] for a, b in zip(sequential, batched))
    same_trajectories = sum(a["steps"] == b["steps"] for a, b in zip(sequential, batched))
    same_but_scores = sum(_unscored(a) == _unscored(b) for a, b in zip(sequential, batched))
    result = {
        "model": args.model,
        "questions": len(questions),
        "sequential_s": round(t_sequential, 2),
        "batched_s": round(t_batched, 2),
        "speedup": round(t_sequential / t_batched, 2),
        "same_answers": same_answers,
        "identical_trajectories": same_trajectories,
        "identical_except_retrieval_scores": same_but_scores,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _unscored(output: dict) -> list[dict]:
    """Steps without retrieval scores, which differ by float noise between single and batched query
    embedding (and so, rarely, in their rounded 4th decimal)."""
    return [{**s, "docs": [d["id"] for d in s["docs"]]} if "docs" in s else s for s in output["steps"]]


if __name__ == "__main__":
    main()
